"""Errors of the wire layer.

Every way a byte stream can be wrong maps to one ``WireError`` subclass, so a
connection owner can log a precise reason and drop the connection without
ever catching a bare ``Exception``.  No other exception type escapes the
codec on bad input.
"""

from __future__ import annotations


class WireError(Exception):
    """Base class: the peer sent something this side cannot accept."""


class FrameTooLarge(WireError):
    """A frame header announced more bytes than the configured bound."""

    def __init__(self, frame_bytes: int, frame_bytes_max: int) -> None:
        super().__init__(
            f"frame of {frame_bytes} bytes exceeds the limit of {frame_bytes_max} bytes"
        )
        self.frame_bytes = frame_bytes
        self.frame_bytes_max = frame_bytes_max


class UnknownFrameKind(WireError):
    """A frame header carried a kind byte this side does not know."""

    def __init__(self, kind: int) -> None:
        super().__init__(f"unknown frame kind {kind}")
        self.kind = kind


class UnexpectedFrameKind(WireError):
    """A known frame kind arrived where the protocol does not allow it."""

    def __init__(self, kind: int, expected: str) -> None:
        super().__init__(f"unexpected frame kind {kind}; expected {expected}")
        self.kind = kind


class MalformedPayload(WireError):
    """A frame's payload did not decode as the type that frame kind carries."""

    def __init__(self, kind: int, detail: str) -> None:
        super().__init__(f"malformed payload in frame of kind {kind}: {detail}")
        self.kind = kind
        self.detail = detail


class UnknownPeerService(WireError):
    """A peer frame's service tag names a service this node does not serve."""

    def __init__(self, service: int, served: str) -> None:
        super().__init__(
            f"peer frame for service tag {service}, which this node does not serve "
            f"(it serves {served})"
        )
        self.service = service


class HandshakeError(WireError):
    """The handshake did not complete: wrong first frame, bad hello, bad answer."""


class HandshakeRefused(HandshakeError):
    """The other side answered the hello with a refusal (or this side refused it)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"handshake refused ({code}): {reason}")
        self.code = code
        self.reason = reason
