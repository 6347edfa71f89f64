"""The cluster's own state, kept in system keys of the metadata store.

Keys (values are JSON so ``catenary metadata get`` shows them readably):

- ``/catenary/cluster``: ``ClusterRecord``; its presence means "provisioned".
- ``/catenary/next_node_id``: the next NodeId to hand out, as decimal text.  A
  joining node's id is taken by a compare-and-set on this key's version, so an
  id is never handed out twice and never reused (a removed node's id stays
  retired).
- ``/catenary/nodes/<id>``: ``NodeRecord`` of every node ever registered: its
  addresses, roles, latest generation and whether it was removed.

Clients may read these keys; only the node itself writes them (client writes
under ``/catenary/`` are refused).
"""

from __future__ import annotations

import msgspec

SYSTEM_PREFIX = "/catenary/"
CLUSTER_KEY = "/catenary/cluster"
NEXT_NODE_ID_KEY = "/catenary/next_node_id"
NODES_PREFIX = "/catenary/nodes/"


class ClusterRecord(msgspec.Struct, kw_only=True):
    format: int = 1
    cluster_name: str
    created_ms: int
    founder: int = 1


class NodeRecord(msgspec.Struct, kw_only=True):
    node: int
    generation: int
    name: str = ""
    peer_address: str
    client_address: str
    admin_address: str = ""
    roles: list[str] = msgspec.field(default_factory=list)
    removed: bool = False


def node_key(node: int) -> str:
    return f"{NODES_PREFIX}{node}"


def node_of_key(key: str) -> int | None:
    rest = key[len(NODES_PREFIX) :] if key.startswith(NODES_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


_node_decoder = msgspec.json.Decoder(NodeRecord)


def encode(record: NodeRecord | ClusterRecord) -> bytes:
    return msgspec.json.encode(record)


def decode_node(value: bytes) -> NodeRecord | None:
    """None for a value that is not a node record (reported by the caller)."""
    try:
        return _node_decoder.decode(value)
    except msgspec.DecodeError:
        return None
