"""The handshake that opens every connection, sans-IO.

Theory of operation
-------------------
1. The dialer's first frame is ``HELLO`` carrying a ``Hello``.  It sends
   nothing else until it has the answer.
2. The acceptor's first frame is the answer: ``HELLO_ACK`` with a ``HelloAck``
   (its own identity), or ``HELLO_REFUSED`` with a ``HelloRefused`` naming the
   reason; after a refusal the acceptor closes the connection.
3. The acceptor checks, in this order: magic, protocol version within
   ``[PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX]`` (and, for a peer, at least
   ``PEER_PROTOCOL_VERSION_MIN``), role allowed on this
   listener, cluster name equal, identity well formed (a peer has a node id > 0
   and a generation > 0; a client has neither), then the caller's hook (which
   knows membership: expected node ids, generations already seen).  The first
   failing check names the refusal.
4. The acceptor's ack carries the version the connection speaks from then
   on: the lower of the hello's and its own (``agreed_version``).
   The dialer checks the ack: protocol version in range (a peer: at least
   ``PEER_PROTOCOL_VERSION_MIN``), the same cluster,
   and, when it dialed a known peer, that the acceptor is that node.  A dialer
   that reached the wrong node drops the connection (addresses move).
5. Both sides bound the first frame at ``HELLO_FRAME_BYTES_MAX_DEFAULT``-ish
   bytes (configurable), so a stranger cannot make a node buffer megabytes.
6. Nothing here does I/O: functions take and return frames, bytes and values.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import msgspec

from catenary.wire.errors import HandshakeError, HandshakeRefused, UnexpectedFrameKind
from catenary.wire.frame import (
    HELLO_FRAME_BYTES_MAX_DEFAULT,
    Frame,
    FrameKind,
    decode_payload,
    encode_message,
)

# b"CTNY" read as a big-endian u32: a stream that is not catenary's fails here.
MAGIC = 0x43544E59
# Version 2: peer frames carry a service tag (``catenary.wire.peer``).  The
# client protocol is the same in 1 and 2, so clients of either are served; a
# peer must speak 2 (its frames would lack the tag otherwise).  Version 3: a
# connection may carry PING and PONG frames (``catenary.wire.liveness``); they
# are sent only on connections that agreed 3 or later, so nodes and clients of
# 1 and 2 are still served as before.
PROTOCOL_VERSION = 3
PROTOCOL_VERSION_MIN = 1
PROTOCOL_VERSION_MAX = 3
PEER_PROTOCOL_VERSION_MIN = 2


class Role(StrEnum):
    PEER = "peer"  # another node: Raft and other node-to-node traffic
    CLIENT = "client"  # a client or an admin tool: the request/reply protocol


class RefusalCode(StrEnum):
    BAD_MAGIC = "bad_magic"
    VERSION = "version"  # protocol version outside the acceptor's range
    ROLE = "role"  # this listener does not serve that role
    CLUSTER = "cluster"  # another cluster's node or client
    IDENTITY = "identity"  # malformed identity (node id / generation)
    UNKNOWN_NODE = "unknown_node"  # not a member this node expects
    STALE_GENERATION = "stale_generation"  # an older incarnation than one already seen
    DUPLICATE = "duplicate"  # a better connection between the pair exists
    MALFORMED = "malformed"  # the hello did not decode
    SHUTTING_DOWN = "shutting_down"
    BUSY = "busy"  # at its connection bound: retry later or elsewhere
    OTHER = "other"


class Hello(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    # Fields travel in this order (array_like); magic and version default to this build's.
    magic: int = MAGIC
    protocol_version: int = PROTOCOL_VERSION
    cluster_name: str
    node_id: int  # 0 for a client
    generation: int  # 0 for a client
    role: str  # a Role value


class HelloAck(msgspec.Struct, array_like=True, frozen=True):
    protocol_version: int  # the version this connection speaks from now on
    cluster_name: str
    node_id: int
    generation: int


class HelloRefused(msgspec.Struct, array_like=True, frozen=True):
    code: str  # a RefusalCode value
    reason: str  # for a human: what was expected and what was seen


# The caller's hook: None to go on, or the refusal.
HelloCheck = Callable[[Hello], HelloRefused | None]

_encoder = msgspec.msgpack.Encoder()
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_ack_decoder = msgspec.msgpack.Decoder(HelloAck)
_refused_decoder = msgspec.msgpack.Decoder(HelloRefused)


def make_hello(cluster_name: str, node_id: int, generation: int, role: Role) -> Hello:
    return Hello(cluster_name=cluster_name, node_id=node_id, generation=generation, role=str(role))


def encode_hello(hello: Hello, frame_bytes_max: int = HELLO_FRAME_BYTES_MAX_DEFAULT) -> bytes:
    return encode_message(FrameKind.HELLO, hello, _encoder, frame_bytes_max)


def decode_hello(frame: Frame) -> Hello:
    """The dialer's hello from the first frame; raises a ``WireError`` if it is not one."""
    if frame.kind != FrameKind.HELLO:
        raise UnexpectedFrameKind(frame.kind, "HELLO as the first frame")
    return decode_payload(frame, _hello_decoder)


def decode_handshake(kind: int, payload: bytes) -> Hello | HelloAck | HelloRefused:
    """Any handshake frame's value by its kind; a ``WireError`` for anything else.

    Callers that check an ack should prefer ``decode_hello_reply`` (rule 4).
    """
    frame = Frame(kind, payload)
    if kind == FrameKind.HELLO:
        return decode_payload(frame, _hello_decoder)
    if kind == FrameKind.HELLO_ACK:
        return decode_payload(frame, _ack_decoder)
    if kind == FrameKind.HELLO_REFUSED:
        return decode_payload(frame, _refused_decoder)
    raise UnexpectedFrameKind(kind, "a handshake frame")


def check_hello(
    hello: Hello,
    *,
    cluster_name: str,
    roles: frozenset[Role],
    validate: HelloCheck | None = None,
) -> HelloRefused | None:
    """The acceptor's verdict on a hello: None to accept, else the refusal (rule 3)."""
    if hello.magic != MAGIC:
        return HelloRefused(
            RefusalCode.BAD_MAGIC, f"bad magic {hello.magic:#x}, expected {MAGIC:#x}"
        )
    if not PROTOCOL_VERSION_MIN <= hello.protocol_version <= PROTOCOL_VERSION_MAX:
        return HelloRefused(
            RefusalCode.VERSION,
            f"protocol version {hello.protocol_version} not in "
            f"[{PROTOCOL_VERSION_MIN}, {PROTOCOL_VERSION_MAX}]",
        )
    if hello.role == Role.PEER and hello.protocol_version < PEER_PROTOCOL_VERSION_MIN:
        return HelloRefused(
            RefusalCode.VERSION,
            f"peer protocol version {hello.protocol_version} has no service tag in its peer "
            f"frames; a peer needs version >= {PEER_PROTOCOL_VERSION_MIN}",
        )
    if hello.role not in roles:
        return HelloRefused(
            RefusalCode.ROLE,
            f"role {hello.role!r} not served here (serves {sorted(str(r) for r in roles)})",
        )
    if hello.cluster_name != cluster_name:
        return HelloRefused(
            RefusalCode.CLUSTER,
            f"cluster {hello.cluster_name!r} is not this cluster ({cluster_name!r})",
        )
    if hello.role == Role.PEER and (hello.node_id <= 0 or hello.generation <= 0):
        return HelloRefused(
            RefusalCode.IDENTITY,
            f"a peer needs node id > 0 and generation > 0, got N{hello.node_id}:{hello.generation}",
        )
    if hello.role == Role.CLIENT and (hello.node_id < 0 or hello.generation < 0):
        return HelloRefused(RefusalCode.IDENTITY, "negative node id or generation")
    if validate is not None:
        return validate(hello)
    return None


def agreed_version(hello: Hello) -> int:
    """The version a connection speaks after its hello was accepted: the lower of the two."""
    return min(hello.protocol_version, PROTOCOL_VERSION)


def encode_hello_reply(
    answer: HelloAck | HelloRefused, frame_bytes_max: int = HELLO_FRAME_BYTES_MAX_DEFAULT
) -> bytes:
    kind = FrameKind.HELLO_ACK if isinstance(answer, HelloAck) else FrameKind.HELLO_REFUSED
    return encode_message(kind, answer, _encoder, frame_bytes_max)


def decode_hello_reply(
    frame: Frame,
    *,
    cluster_name: str,
    expect_node_id: int | None = None,
    version_min: int = PROTOCOL_VERSION_MIN,
) -> HelloAck:
    """The acceptor's ack, checked (rule 4).

    Raises ``HandshakeRefused`` if the acceptor refused, ``HandshakeError`` if the
    ack is not acceptable, another ``WireError`` if the frame is not an answer.
    """
    if frame.kind == FrameKind.HELLO_REFUSED:
        refused = decode_payload(frame, _refused_decoder)
        raise HandshakeRefused(refused.code, refused.reason)
    if frame.kind != FrameKind.HELLO_ACK:
        raise UnexpectedFrameKind(frame.kind, "HELLO_ACK or HELLO_REFUSED")
    ack = decode_payload(frame, _ack_decoder)
    if not max(version_min, PROTOCOL_VERSION_MIN) <= ack.protocol_version <= PROTOCOL_VERSION_MAX:
        raise HandshakeError(
            f"acceptor chose protocol version {ack.protocol_version}, not in "
            f"[{max(version_min, PROTOCOL_VERSION_MIN)}, {PROTOCOL_VERSION_MAX}]"
        )
    if ack.cluster_name != cluster_name:
        raise HandshakeError(
            f"acceptor belongs to cluster {ack.cluster_name!r}, not {cluster_name!r}"
        )
    if expect_node_id is not None and ack.node_id != expect_node_id:
        raise HandshakeError(
            f"dialed N{expect_node_id} but reached N{ack.node_id}:{ack.generation}"
        )
    return ack
