"""Provisioning: the first node of a cluster creates it.

Rules:

1. Only a node without seeds and not joining provisions, and only a cluster of
   its own name.
2. The node takes NodeId 1 (persisted in the marker, with ``founder``), starts
   Raft with itself as the only voter, and once leader writes
   ``/catenary/next_node_id``, ``/catenary/nodes/1`` and ``/catenary/cluster``
   (last: its presence means "provisioned").  Each write is create-if-absent,
   so a founder that is leader completes a half-done provisioning after a
   crash (``complete``, called by the leader's duties).
3. ``provision_self`` waits at most ``metadata.request_timeout_ms`` for the
   keys; past it the caller is told UNAVAILABLE and the leader's duties finish
   the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from catenary.api import messages as api
from catenary.api.errors import ServiceError
from catenary.api.messages import ErrorCode
from catenary.core.metadata import types as md
from catenary.server import system_keys as sk
from catenary.server.context import NodeContext
from catenary.server.metadata import ReplicatedMetadata

log = logging.getLogger("catenary.server")


def _error(code: ErrorCode, message: str) -> ServiceError:
    return ServiceError(code, message)


class Provisioner:
    """Creates the cluster on its founder (see the module rules)."""

    def __init__(
        self,
        ctx: NodeContext,
        metadata: ReplicatedMetadata,
        *,
        start_replica: Callable[[], Awaitable[None]],
    ) -> None:
        self._ctx = ctx
        self._metadata = metadata
        self._start_replica = start_replica  # as founder; the node then runs
        self._lock = asyncio.Lock()

    async def provision(self, request: api.Provision) -> str:
        """Rules 1-2, asked for by an operator."""
        ctx, config = self._ctx, self._ctx.config
        if request.cluster_name and request.cluster_name != config.cluster_name:
            raise _error(
                ErrorCode.REFUSED,
                f"this node belongs to cluster {config.cluster_name!r}, "
                f"not {request.cluster_name!r}",
            )
        if ctx.phase == "joining" or (not ctx.node_id and config.seeds):
            raise _error(ErrorCode.REFUSED, "this node joins an existing cluster through its seeds")
        if self._metadata.provisioned():
            return "already provisioned"
        await self.provision_self()
        return "provisioned"

    async def provision_self(self) -> None:
        ctx, config = self._ctx, self._ctx.config
        async with self._lock:
            if not ctx.node_id:
                log.info("provisioning cluster %r as node 1", config.cluster_name)
                await ctx.update_marker(node_id=1, founder=True)
            if self._metadata.host is None:
                await self._start_replica()
            deadline = time.monotonic() + config.metadata.request_timeout_ms / 1000
            while not self._metadata.provisioned():
                if time.monotonic() > deadline:
                    raise _error(ErrorCode.UNAVAILABLE, "provisioning did not complete in time")
                await self.complete()
                if not self._metadata.provisioned():
                    await asyncio.sleep(config.raft.tick_ms / 1000)

    async def complete(self) -> None:
        """As founder and leader: create the system keys that are missing (idempotent)."""
        ctx, config = self._ctx, self._ctx.config
        host = self._metadata.host
        if host is None or not host.replica.is_leader or not ctx.founder:
            return
        state = host.replica.state
        absent = md.Precondition("absent")
        try:
            if state.get(sk.NEXT_NODE_ID_KEY) is None:
                await host.write(md.Put(sk.NEXT_NODE_ID_KEY, b"2", absent))
            if state.get(sk.node_key(ctx.node_id)) is None:
                await host.write(md.Put(sk.node_key(ctx.node_id), self._own_record(), absent))
            if state.get(sk.CLUSTER_KEY) is None:
                record = sk.ClusterRecord(
                    cluster_name=config.cluster_name,
                    created_ms=int(time.time() * 1000),
                    founder=ctx.node_id,
                )
                result = await host.write(md.Put(sk.CLUSTER_KEY, sk.encode(record), absent))
                if isinstance(result, md.Written):
                    log.info("cluster %r provisioned", config.cluster_name)
        except ServiceError as exc:
            log.info("provisioning not complete yet: %s", exc.message)

    def _own_record(self) -> bytes:
        ctx, config = self._ctx, self._ctx.config
        return sk.encode(
            sk.NodeRecord(
                node=ctx.node_id,
                generation=ctx.generation,
                name=config.node_name,
                peer_address=config.peer_address,
                client_address=config.client_address,
                admin_address=config.admin_address,
                roles=list(config.roles),
            )
        )
