"""Writing node records and NodeIds on the leader, each by compare-and-set.

Rules:

1. ``/catenary/next_node_id`` only grows: an id is taken by writing its
   successor under a version precondition, so two joins never get the same id.
2. A node record is created if absent or replaced under its version; the
   join rules (``catenary.core.membership.join_refusal``) decide whether it may be.
3. A write that lost a race waits for the state to change and tries again, at
   most ``ATTEMPTS_MAX`` times; then the join answers UNAVAILABLE.
"""

from __future__ import annotations

from catenary.api import messages as api
from catenary.api.errors import ServiceError
from catenary.api.messages import ErrorCode
from catenary.core.membership import join_refusal
from catenary.core.metadata import types as md
from catenary.runtime.host import MetadataHost
from catenary.server import system_keys as sk
from catenary.server.registry import registration

ATTEMPTS_MAX = 32  # compare-and-set rounds before a contended write gives up

_REFUSAL_CODES = {
    "not_found": ErrorCode.NOT_FOUND,
    "removed": ErrorCode.REFUSED,
    "stale": ErrorCode.REFUSED,
}


def _error(code: ErrorCode, message: str) -> ServiceError:
    return ServiceError(code, message)


async def allocate_node_id(host: MetadataHost) -> int:
    """A new NodeId, by compare-and-set on ``next_node_id``: never handed out twice."""
    for _attempt in range(ATTEMPTS_MAX):
        kv = host.replica.state.get(sk.NEXT_NODE_ID_KEY)
        if kv is None or not kv.value.isdigit():
            raise _error(ErrorCode.INTERNAL, f"{sk.NEXT_NODE_ID_KEY} is missing or unreadable")
        node = int(kv.value)
        result = await host.write(
            md.Put(
                sk.NEXT_NODE_ID_KEY,
                str(node + 1).encode(),
                md.Precondition("version", kv.version),
            )
        )
        if isinstance(result, md.Written):
            return node
        await host.changed()
    raise _error(ErrorCode.UNAVAILABLE, "could not allocate a node id (contention)")


async def record_node(
    host: MetadataHost, node: int, request: api.Join, *, roles: list[str]
) -> sk.NodeRecord:
    """Write ``node``'s record for this join (create-if-absent or compare-and-set)."""
    for _attempt in range(ATTEMPTS_MAX):
        kv = host.replica.state.get(sk.node_key(node))
        old = sk.decode_node(kv.value) if kv is not None else None
        if kv is not None and old is None:
            raise _error(ErrorCode.INTERNAL, f"node record of n{node} is unreadable")
        refusal = join_refusal(
            node,
            registration(old, node) if old is not None else None,
            asked_node=request.node,
            generation=request.generation,
        )
        if refusal is not None:
            raise _error(_REFUSAL_CODES[refusal.kind], refusal.message)
        record = sk.NodeRecord(
            node=node,
            generation=max(request.generation, old.generation if old else 0) or 1,
            name=old.name if old else "",
            peer_address=request.peer_address,
            client_address=request.client_address,
            admin_address=request.admin_address,
            roles=old.roles if old else list(roles),
        )
        if old == record:
            return record
        precondition = (
            md.Precondition("version", kv.version) if kv is not None else md.Precondition("absent")
        )
        result = await host.write(md.Put(sk.node_key(node), sk.encode(record), precondition))
        if isinstance(result, md.Written):
            return record
        await host.changed()
    raise _error(ErrorCode.UNAVAILABLE, f"could not record node n{node} (contention)")
