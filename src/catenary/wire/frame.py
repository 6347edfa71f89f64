"""Length-prefixed frames: the unit every catenary connection carries.

Theory of operation
-------------------
A connection is a byte stream of frames, each laid out as::

    u32 length (big-endian) | u8 kind | payload (length bytes)

``length`` counts the payload only, so the header is a fixed ``HEADER_BYTES``
(5) bytes and a frame occupies ``HEADER_BYTES + length`` bytes.  The payload
is msgpack produced by msgspec; which type it holds is decided by the kind
(see ``FrameKind``) and by the connection's role, never by the payload itself.

Rules the decoder keeps:

1. A frame is accepted only if ``HEADER_BYTES + length <= limit``.  The check
   runs as soon as the 5 header bytes are in, so an oversized announcement is
   refused before any of its body is buffered.  The first frame of a stream
   may have its own, smaller limit (``first_frame_bytes_max``): a handshake is
   tiny, and a stranger must not make us buffer megabytes before saying hello.
2. The kind byte must name a known kind; an unknown kind is an error at once
   (the payload length cannot be trusted from a stream that is already wrong).
3. Input may be split at any byte boundary.  Work is linear in the bytes fed:
   complete frames are cut straight from the incoming chunk when nothing is
   buffered, and a partial frame is buffered in one ``bytearray`` that is only
   appended to until the frame is complete (no re-slicing of a growing buffer).
4. On any error the decoder raises a ``WireError`` subclass and is dead: every
   later ``feed`` raises the same error.  A stream that was wrong once cannot
   be resynchronised, so the only remedy is to drop the connection.
5. Payloads are decoded to typed values only by ``decode_payload``, which turns
   every msgspec failure into ``MalformedPayload``.  The wire layer does not
   know the Raft or client types: callers pass the msgspec decoder in.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, NamedTuple, TypeVar

import msgspec

from catenary.wire.errors import FrameTooLarge, MalformedPayload, UnknownFrameKind, WireError

T = TypeVar("T")

WIRE_FORMAT_VERSION = 1

HEADER = struct.Struct(">IB")
HEADER_BYTES = HEADER.size  # 5
U32_MAX = (1 << 32) - 1

FRAME_BYTES_MAX_DEFAULT = 16 << 20  # 16 MiB, header included
HELLO_FRAME_BYTES_MAX_DEFAULT = 4 << 10  # a handshake frame is a few dozen bytes


class FrameKind(IntEnum):
    """What a frame's payload is.  Values are stable on the wire; never reuse one.

    Ranges keep room for growth: 1-15 handshake and connection control, 16-31 node-to-node,
    32-47 client protocol; the rest is unassigned.
    """

    HELLO = 1  # first frame from the dialer: a Hello
    HELLO_ACK = 2  # acceptor's answer: a HelloAck
    HELLO_REFUSED = 3  # acceptor's answer: a HelloRefused, then the acceptor closes
    PING = 4  # either side, protocol >= 3: are you there? (catenary.wire.liveness)
    PONG = 5  # the answer to a PING, echoing its payload
    PEER = 16  # node -> node (Raft and other peer messages)
    REQUEST = 32  # client -> node: catenary.api.messages.Request
    REPLY = 33  # node -> client: catenary.api.messages.Reply


KNOWN_FRAME_KINDS: frozenset[int] = frozenset(int(k) for k in FrameKind)


class Frame(NamedTuple):
    kind: int  # a FrameKind value (the decoder admits only known kinds)
    payload: bytes


def check_frame_bytes_max(frame_bytes_max: int) -> None:
    if not HEADER_BYTES <= frame_bytes_max <= HEADER_BYTES + U32_MAX:
        raise ValueError(
            f"frame_bytes_max must be in [{HEADER_BYTES}, {HEADER_BYTES + U32_MAX}], "
            f"got {frame_bytes_max}"
        )


def encode_frame(
    kind: int, payload: bytes, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
) -> bytes:
    """One frame's bytes.  Refuses to build a frame the receiver would refuse."""
    frame_bytes = HEADER_BYTES + len(payload)
    if frame_bytes > frame_bytes_max:
        raise FrameTooLarge(frame_bytes, frame_bytes_max)
    if kind not in KNOWN_FRAME_KINDS:
        raise UnknownFrameKind(kind)
    return HEADER.pack(len(payload), kind) + payload


def encode_message(
    kind: int,
    message: Any,
    encoder: msgspec.msgpack.Encoder,
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
) -> bytes:
    """Encode ``message`` with ``encoder`` straight into a frame (one buffer, no copy)."""
    if kind not in KNOWN_FRAME_KINDS:
        raise UnknownFrameKind(kind)
    buf = bytearray(HEADER_BYTES)
    encoder.encode_into(message, buf, HEADER_BYTES)
    frame_bytes = len(buf)
    if frame_bytes > frame_bytes_max:
        raise FrameTooLarge(frame_bytes, frame_bytes_max)
    HEADER.pack_into(buf, 0, frame_bytes - HEADER_BYTES, kind)
    return bytes(buf)


def decode_payload(frame: Frame, decoder: msgspec.msgpack.Decoder[T]) -> T:
    """The frame's payload as the decoder's type; any failure is ``MalformedPayload``."""
    try:
        return decoder.decode(frame.payload)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise MalformedPayload(frame.kind, str(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # msgspec reports bad data as DecodeError; these guard its corners
        # (e.g. enum or int conversions in user types) so none escapes untyped.
        raise MalformedPayload(frame.kind, f"{type(exc).__name__}: {exc}") from None


class FrameDecoder:
    """Incremental, sans-IO frame decoder.  See the module docstring for its rules."""

    __slots__ = ("_buf", "_failed", "_first_limit", "_kinds", "_limit", "_seen_first")

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        *,
        first_frame_bytes_max: int | None = None,
        kinds: frozenset[int] = KNOWN_FRAME_KINDS,
    ) -> None:
        check_frame_bytes_max(frame_bytes_max)
        if first_frame_bytes_max is not None:
            check_frame_bytes_max(first_frame_bytes_max)
        self._limit = frame_bytes_max
        self._first_limit = (
            frame_bytes_max if first_frame_bytes_max is None else first_frame_bytes_max
        )
        self._seen_first = False
        self._kinds = kinds
        self._buf = bytearray()
        self._failed: WireError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame not yet complete (bounded by the frame limit)."""
        return len(self._buf)

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Take the next bytes of the stream; return every frame they complete, in order."""
        if self._failed is not None:
            raise self._failed
        try:
            if self._buf:
                self._buf += data
                frames, used = self._cut(self._buf)
                if used:
                    # One front deletion per feed: only the tail of a partial
                    # frame remains, so this is at most one frame's bytes.
                    del self._buf[:used]
                return frames
            frames, used = self._cut(data)
            if used < len(data):
                self._buf += memoryview(data)[used:]
            return frames
        except WireError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: WireError) -> None:
        self._failed = exc
        self._buf = bytearray()

    def _cut(self, data: bytes | bytearray | memoryview) -> tuple[list[Frame], int]:
        frames: list[Frame] = []
        end = len(data)
        pos = 0
        unpack = HEADER.unpack_from
        kinds = self._kinds
        with memoryview(data) as view:
            while end - pos >= HEADER_BYTES:
                length, kind = unpack(view, pos)
                limit = self._limit if self._seen_first else self._first_limit
                if HEADER_BYTES + length > limit:
                    raise FrameTooLarge(HEADER_BYTES + length, limit)
                if kind not in kinds:
                    raise UnknownFrameKind(kind)
                stop = pos + HEADER_BYTES + length
                if stop > end:
                    break
                frames.append(Frame(kind, bytes(view[pos + HEADER_BYTES : stop])))
                self._seen_first = True
                pos = stop
        return frames, pos

    def set_frame_bytes_max(self, frame_bytes_max: int) -> None:
        """Change the bound for frames not yet started (e.g. after a handshake)."""
        check_frame_bytes_max(frame_bytes_max)
        self._limit = frame_bytes_max
