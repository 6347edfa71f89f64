"""Peer frames carry a service tag, so several services share one peer link.

A ``PEER`` frame's payload is::

    u8 service | msgpack message

The service byte says whose message follows (``PeerService``): Raft's today,
the loglet's next, each with its own message type and decoder.  Rules:

1. Values are stable on the wire and never reused; Raft is 0.
2. A receiver that does not serve the tag refuses the frame with
   ``UnknownPeerService`` (a ``WireError``) naming the tag and the services it
   serves; its owner drops the connection, as for any other bad frame (a peer
   that sends a service this node does not run is a misconfiguration, and
   nothing sent after it can be trusted to mean what the sender meant).
3. An empty payload has no tag: ``MalformedPayload``.
4. Peers speak these frames from handshake protocol version 2
   (``PEER_PROTOCOL_VERSION_MIN``); an older peer is refused at the handshake.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any, TypeVar

import msgspec

from catenary.wire.errors import FrameTooLarge, MalformedPayload, UnknownPeerService
from catenary.wire.frame import (
    FRAME_BYTES_MAX_DEFAULT,
    HEADER,
    HEADER_BYTES,
    Frame,
    FrameKind,
    decode_payload,
)

T = TypeVar("T")

PEER_SERVICE_BYTES = 1


class PeerService(IntEnum):
    """Whose message a peer frame carries.  Values are stable on the wire; never reuse one."""

    RAFT = 0  # catenary.core.raft.types.Message: the metadata group's Raft traffic
    LOGLET = 1  # catenary.host.log_node.Envelope: loglets, sequencers, forwarded appends


def encode_peer_message(
    service: int,
    message: Any,
    encoder: msgspec.msgpack.Encoder,
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
) -> bytes:
    """A ``PEER`` frame carrying ``message`` for ``service`` (one buffer, no copy)."""
    if not 0 <= service <= 0xFF:
        raise ValueError(f"a peer service tag is one byte, got {service}")
    start = HEADER_BYTES + PEER_SERVICE_BYTES
    buf = bytearray(start)
    buf[HEADER_BYTES] = service
    encoder.encode_into(message, buf, start)
    frame_bytes = len(buf)
    if frame_bytes > frame_bytes_max:
        raise FrameTooLarge(frame_bytes, frame_bytes_max)
    HEADER.pack_into(buf, 0, frame_bytes - HEADER_BYTES, FrameKind.PEER)
    return bytes(buf)


def peer_service_of(frame: Frame, served: Mapping[int, object]) -> int:
    """The frame's service tag, if ``served`` has it (rules 2 and 3)."""
    if not frame.payload:
        raise MalformedPayload(frame.kind, "a peer frame without a service tag")
    service = frame.payload[0]
    if service not in served:
        raise UnknownPeerService(service, _names(served))
    return service


def decode_peer_message(frame: Frame, decoder: msgspec.msgpack.Decoder[T]) -> T:
    """The message after the service tag; any failure is ``MalformedPayload``."""
    body = Frame(frame.kind, frame.payload[PEER_SERVICE_BYTES:])
    return decode_payload(body, decoder)


def _names(served: Mapping[int, object]) -> str:
    names = []
    for tag in sorted(served):
        try:
            names.append(f"{PeerService(tag).name.lower()}={tag}")
        except ValueError:
            names.append(str(tag))
    return ", ".join(names) or "none"
