"""The node's peer transport: Raft messages between nodes over ``PeerTransport``.

A peer's hello is checked against the node records the node has applied: a
removed node is refused, and so is an incarnation older than the recorded
generation.  A node not yet in the records (a learner whose record this node
has not applied yet) is accepted: Raft itself ignores messages from nodes
that are not members.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random
from typing import Protocol

import msgspec

from catenary.core.raft.types import Message
from catenary.runtime.transport import PeerTransport
from catenary.server.config import ServerConfig
from catenary.server.system_keys import NodeRecord
from catenary.wire import Hello, HelloRefused, RefusalCode
from catenary.wire.address import parse_address

_message_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


class PeerLink(Protocol):
    """What the node needs of the peer transport."""

    async def start(self) -> None: ...
    def send(self, peer_id: int, message: Message) -> object: ...
    def set_peer_address(self, peer_id: int, address: str | None) -> None: ...
    async def close(self) -> None: ...


def make_peer_link(
    config: ServerConfig,
    node_id: int,
    generation: int,
    *,
    node_record: Callable[[int], NodeRecord | None],
    on_message: Callable[[Message], None],
    on_link: Callable[[int, bool], None] | None = None,
) -> PeerTransport[Message]:
    """The transport of node ``node_id``, checking hellos against ``node_record``."""
    host, port = parse_address(config.peer_address)

    def validate(hello: Hello) -> HelloRefused | None:
        record = node_record(hello.node_id)
        if record is None:
            return None
        if record.removed:
            return HelloRefused(
                RefusalCode.UNKNOWN_NODE, f"n{hello.node_id} was removed from the cluster"
            )
        if hello.generation < record.generation:
            return HelloRefused(
                RefusalCode.STALE_GENERATION,
                f"n{hello.node_id} generation {hello.generation} is older than the recorded "
                f"{record.generation}",
            )
        return None

    def receive(peer_id: int, message: Message) -> None:
        if message.src != peer_id:
            return  # a message must come from the node that sent the hello
        on_message(message)

    return PeerTransport(
        node_id,
        generation,
        config.cluster_name,
        host,
        port,
        receive,
        config.network.transport_options(),
        decoder=_message_decoder,
        validate_peer=validate,
        rng=Random(node_id * 1_000_003 + generation),
        on_link=on_link,
    )
