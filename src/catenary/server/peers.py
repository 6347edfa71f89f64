"""The node's peer transport: Raft messages between nodes over ``PeerTransport``.

A peer's hello is checked against the node records the node has applied: a
removed node is refused, and so is an incarnation older than the recorded
generation.  A node not yet in the records (a learner whose record this node
has not applied yet) is accepted: Raft itself ignores messages from nodes
that are not members.
"""

from __future__ import annotations

from random import Random
from typing import TYPE_CHECKING

import msgspec

from catenary.core.raft.types import Message
from catenary.runtime.transport import PeerTransport
from catenary.wire import Hello, HelloRefused, RefusalCode
from catenary.wire.address import parse_address

if TYPE_CHECKING:
    from catenary.server.node import Server

_message_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def make_peer_link(server: Server) -> PeerTransport[Message]:
    config = server.config
    host, port = parse_address(config.peer_address)
    network = config.network

    def validate(hello: Hello) -> HelloRefused | None:
        record = server.node_record(hello.node_id)
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

    def on_message(peer_id: int, message: Message) -> None:
        if message.src != peer_id:
            return  # a message must come from the node that sent the hello
        server.on_peer_message(message)

    return PeerTransport(
        server.node_id,
        server.generation,
        config.cluster_name,
        host,
        port,
        on_message,
        network.transport_options(),
        decoder=_message_decoder,
        validate_peer=validate,
        rng=Random(server.node_id * 1_000_003 + server.generation),
    )
