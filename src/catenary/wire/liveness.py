"""Liveness of one connection: when the other side was last heard, when to ping, when to give up.

Theory of operation
-------------------
A TCP connection whose other side vanished (a cut network, a frozen process)
looks exactly like an idle one until the kernel gives up, which takes many
seconds or minutes.  So every connection of protocol version 3 or later
(``LIVENESS_PROTOCOL_VERSION_MIN``) keeps its own evidence:

1. Every byte received counts as *hearing* the other side.
2. A side that has heard nothing for ``ping_interval`` sends a ``PING`` frame
   (at most one per interval); a side that receives a ``PING`` answers it with
   a ``PONG`` carrying the same payload.  Traffic in either direction therefore
   keeps both sides informed, and an idle link costs one small frame per
   interval.
3. A side that has heard nothing for ``idle_timeout`` declares the connection
   dead and aborts it (no graceful flush: the socket is presumed stalled); its
   owner redials.  ``idle_timeout`` must exceed ``ping_interval`` so a healthy
   but idle link always has time to answer.
4. Connections that agreed an older version (< 3) neither send pings nor time
   out: an older node does not know the frame kinds.  TCP keepalive and
   ``TCP_USER_TIMEOUT`` (``tune_socket``) remain as the kernel's backstop on
   every socket, whatever the version.

``LivenessClock`` is sans-IO: the owner passes ``now`` (seconds, any monotonic
clock) and acts on the answer of ``poll``.
"""

from __future__ import annotations

import contextlib
import math
import socket
from typing import NamedTuple

from catenary.wire.frame import FrameKind, encode_frame

# The first protocol version whose connections carry PING and PONG.
LIVENESS_PROTOCOL_VERSION_MIN = 3
# A PING's payload is opaque to the receiver, echoed in the PONG, at most this long.
PING_PAYLOAD_BYTES_MAX = 8
# Keepalive probes sent before the kernel drops an unanswered connection.
KEEPALIVE_PROBES = 3

PONG_EMPTY = encode_frame(FrameKind.PONG, b"")


def check_liveness_bounds(ping_interval: float, idle_timeout: float, unit: str) -> None:
    """ValueError unless ``0 < ping_interval < idle_timeout``."""
    if not ping_interval > 0:
        raise ValueError(f"ping_interval_{unit} must be > 0, got {ping_interval}")
    if not idle_timeout > ping_interval:
        raise ValueError(
            f"idle_timeout_{unit} ({idle_timeout}) must exceed ping_interval_{unit} "
            f"({ping_interval}) so an idle link has time to answer a ping"
        )


def encode_ping(payload: bytes = b"") -> bytes:
    if len(payload) > PING_PAYLOAD_BYTES_MAX:
        raise ValueError(f"a ping payload is at most {PING_PAYLOAD_BYTES_MAX} bytes")
    return encode_frame(FrameKind.PING, payload)


def encode_pong(ping_payload: bytes) -> bytes:
    """The answer to a PING: its payload echoed (cut to ``PING_PAYLOAD_BYTES_MAX``)."""
    if not ping_payload:
        return PONG_EMPTY
    return encode_frame(FrameKind.PONG, ping_payload[:PING_PAYLOAD_BYTES_MAX])


class Poll(NamedTuple):
    dead: bool  # heard nothing for idle_timeout: abort the connection
    ping: bool  # send a PING now
    next_s: float  # poll again at this time (same clock as ``now``)
    silent_s: float  # how long the other side has been silent


class LivenessClock:
    """When the other side was last heard; when to ping; when to declare it dead (rules 1-3)."""

    __slots__ = ("idle_timeout_s", "last_heard_s", "last_ping_s", "ping_interval_s")

    def __init__(self, ping_interval_s: float, idle_timeout_s: float, now: float) -> None:
        check_liveness_bounds(ping_interval_s, idle_timeout_s, "s")
        self.ping_interval_s = ping_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.last_heard_s = now
        self.last_ping_s = -math.inf

    def heard(self, now: float) -> None:
        self.last_heard_s = now

    def poll(self, now: float) -> Poll:
        silent = now - self.last_heard_s
        if silent >= self.idle_timeout_s:
            return Poll(True, False, now, silent)
        ping = silent >= self.ping_interval_s and now - self.last_ping_s >= self.ping_interval_s
        if ping:
            self.last_ping_s = now
        next_ping = max(self.last_heard_s, self.last_ping_s) + self.ping_interval_s
        next_s = min(self.last_heard_s + self.idle_timeout_s, next_ping)
        return Poll(False, ping, max(next_s, now), silent)


def tune_socket(sock: socket.socket | None, idle_timeout_ms: int) -> None:
    """TCP keepalive and ``TCP_USER_TIMEOUT`` as a backstop (rule 4); best effort.

    Keepalive starts probing after ``idle_timeout_ms`` of silence (at least 1 s,
    the kernel's unit), probes every second and gives up after
    ``KEEPALIVE_PROBES`` unanswered probes; ``TCP_USER_TIMEOUT`` drops a
    connection whose sent data stays unacknowledged for ``idle_timeout_ms``.
    Options a platform lacks are skipped.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle_s = max(1, math.ceil(idle_timeout_ms / 1000))
    options = [(socket.SOL_SOCKET, getattr(socket, "SO_KEEPALIVE", None), 1)]
    options += [
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle_s),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), idle_timeout_ms),
    ]
    for level, name, value in options:
        if name is None:
            continue
        with contextlib.suppress(OSError):
            sock.setsockopt(level, name, value)
