"""Cluster membership: entering the cluster, the leader's side of joins, NodeIds, promotion.

Rules (the decisions themselves are the sans-IO ``catenary.core.membership``):

1. Start.  A node with a NodeId restarts its replica and announces its new
   generation; one without joins through its seeds (``joining``); with no
   seeds it provisions a cluster of one when auto-provisioning is on (the
   default unless ``production``), else waits for ``Provision``.
2. Provision: see ``provisioning`` (the founder creates the cluster; its
   leader duties finish a half-done provisioning after a crash).
3. Join (on the leader).  An id is taken by compare-and-set on
   ``/catenary/next_node_id`` (never reused) unless the joiner already holds
   an unused one; the node record is written (create-if-absent, or updated
   with the new generation and addresses); the node is added to Raft as a
   learner; the reply names the id and the members.  Joins are serialized.
4. Promotion.  The leader checks its learners every few ticks and promotes
   the first caught-up one; one configuration change at a time.
5. ``AddServer`` adds a registered node as a learner; ``RemoveServer`` removes
   a member and marks its record removed (the last voter cannot be removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from catenary.api import messages as api
from catenary.api.errors import ServiceError
from catenary.api.messages import ErrorCode
from catenary.core.membership import (
    Promotion,
    match_indexes,
    reusable_node_id,
)
from catenary.core.metadata import types as md
from catenary.core.raft.types import ConfChange, ConfChangeKind
from catenary.runtime.host import MetadataHost
from catenary.runtime.rpc import RpcError, call
from catenary.server import system_keys as sk
from catenary.server.context import NodeContext
from catenary.server.joining import Joiner
from catenary.server.metadata import LocalMetadata, ReplicatedMetadata
from catenary.server.provisioning import Provisioner
from catenary.server.records import allocate_node_id, record_node
from catenary.server.registry import NodeRegistry
from catenary.wire.address import AddressError, parse_address

log = logging.getLogger("catenary.server")


def _error(code: ErrorCode, message: str) -> ServiceError:
    return ServiceError(code, message)


class ClusterMembership:
    """Membership of a node whose metadata is replicated (see the module rules)."""

    def __init__(
        self, ctx: NodeContext, metadata: ReplicatedMetadata, registry: NodeRegistry
    ) -> None:
        self._ctx = ctx
        self._metadata = metadata
        self._registry = registry
        self._join_lock = asyncio.Lock()
        self._promotion = Promotion(ctx.config.raft.promote_lag_entries_max)
        self._joiner = Joiner(
            ctx,
            registry,
            leader=self._known_leader,
            provisioned=metadata.provisioned,
            start_replica=lambda: self._start_replica(founder=False),
        )
        self._provisioner = Provisioner(ctx, metadata, start_replica=self._start_as_founder)

    def _known_leader(self) -> int | None:
        host = self._metadata.host
        return host.replica.leader if host is not None else None

    async def _start_replica(self, *, founder: bool) -> None:
        await self._metadata.start_replica(founder=founder)
        self._ctx.spawn(self._leader_duties_loop(), "leader-duties")

    async def start(self) -> None:
        """Rule 1."""
        ctx, config = self._ctx, self._ctx.config
        if ctx.node_id:
            await self._start_replica(founder=ctx.founder)
            ctx.phase = "running"
            ctx.spawn(self._joiner.announce_loop(), "announce")
        elif config.seeds:
            ctx.phase = "joining"
            ctx.spawn(self._joiner.join_loop(), "join")
        elif config.provision_automatically:
            try:
                await self._provisioner.provision_self()
            except ServiceError as exc:
                # Raft is running; the leader-duties loop finishes the system keys.
                log.warning("provisioning still in progress: %s", exc.message)
        else:
            ctx.phase = "unprovisioned"
            log.info("waiting to be provisioned (catenary provision) or configured with seeds")

    async def provision(self, request: api.Provision) -> str:
        """Rule 2, asked for by an operator."""
        return await self._provisioner.provision(request)

    async def _start_as_founder(self) -> None:
        await self._start_replica(founder=True)
        self._ctx.phase = "running"
        self._ctx.spawn(self._joiner.announce_loop(), "announce")

    # ------------------------------------------------ joins, on the leader

    def _require_leader(self) -> MetadataHost:
        host = self._metadata.require_host()
        if not host.replica.is_leader:
            leader = host.replica.leader
            raise ServiceError(
                ErrorCode.NOT_LEADER,
                "joins are handled by the metadata leader",
                leader=leader,
                leader_address=self._registry.client_address_of(leader) if leader else "",
            )
        return host

    async def join(self, request: api.Join) -> api.JoinReply:
        """Rule 3."""
        config = self._ctx.config
        self._metadata.require_host()
        if request.cluster_name != config.cluster_name:
            raise _error(
                ErrorCode.REFUSED,
                f"cluster {request.cluster_name!r} is not this cluster ({config.cluster_name!r})",
            )
        for option, value in (
            ("peer_address", request.peer_address),
            ("client_address", request.client_address),
        ):
            try:
                parse_address(value)
            except AddressError as exc:
                raise _error(ErrorCode.BAD_REQUEST, f"{option} {value!r}: {exc.reason}") from None
        host = self._require_leader()
        if not self._metadata.provisioned():
            raise _error(ErrorCode.UNAVAILABLE, "the cluster is not provisioned yet")
        async with self._join_lock:
            if request.node == 0:
                reused = self._unused_id_for(host, request)
                node = reused or await allocate_node_id(host)
            else:
                node = request.node
            record = await record_node(host, node, request, roles=self._ctx.config.roles)
            await self._ensure_member(host, node)
        self._registry.refresh(force=True)
        self._registry.set_peer_address(node, record.peer_address)
        return api.JoinReply(request.id, node, record.generation, self.node_infos())

    def _unused_id_for(self, host: MetadataHost, request: api.Join) -> int | None:
        self._registry.refresh(force=True)
        raft = host.replica.raft
        node = reusable_node_id(
            self._registry.registrations(),
            peer_address=request.peer_address,
            client_address=request.client_address,
            voters=raft.membership.voters,
            learners=raft.membership.learners,
            matches=match_indexes(raft),
        )
        if node is not None:
            log.info("join from %s again: it keeps n%d", request.peer_address, node)
        return node

    async def _ensure_member(self, host: MetadataHost, node: int) -> None:
        deadline = time.monotonic() + self._ctx.config.metadata.request_timeout_ms / 1000
        while True:
            membership = host.replica.raft.membership
            if node in membership.voters or node in membership.learners:
                return
            try:
                index = await host.conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, node))
            except ServiceError as exc:
                # Another change (e.g. a promotion) is in flight: one at a time, so
                # wait for it to apply and try again, within the request's bound.
                if exc.code != ErrorCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(host.changed(), 0.2)
                continue
            log.info("adding n%d as a learner (entry %d)", node, index)
            await self._await_applied(host, index)
            if time.monotonic() > deadline:
                raise _error(ErrorCode.UNAVAILABLE, f"n{node} could not be added in time")
            # Loop: the membership check above confirms the change took effect.

    async def _await_applied(self, host: MetadataHost, index: int) -> None:
        deadline = time.monotonic() + self._ctx.config.metadata.request_timeout_ms / 1000
        while host.replica.state.applied_index < index:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _error(
                    ErrorCode.INDETERMINATE, f"entry {index} not applied in time; it may still be"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(host.changed(), remaining)

    # --------------------------------------------- operators' changes

    def _leader_host(self) -> MetadataHost:
        host = self._metadata.require_host()
        if not host.replica.is_leader:
            raise host._not_leader(host.replica.leader)
        return host

    async def add_server(self, node: int) -> str:
        """Rule 5."""
        host = self._leader_host()
        self._registry.refresh(force=True)
        record = self._registry.get(node)
        if record is None:
            raise _error(
                ErrorCode.NOT_FOUND, f"node n{node} is not registered (it must join first)"
            )
        if record.removed:
            raise _error(ErrorCode.REFUSED, f"node n{node} was removed; it must join anew")
        membership = host.replica.raft.membership
        if node in membership.voters:
            return f"n{node} is already a voter"
        if node in membership.learners:
            return f"n{node} is a learner; it becomes a voter once caught up"
        await self._ensure_member(host, node)
        return f"n{node} added as a learner; it becomes a voter once caught up"

    async def remove_server(self, node: int) -> str:
        """Rule 5."""
        host = self._leader_host()
        membership = host.replica.raft.membership
        if node not in membership.voters and node not in membership.learners:
            raise _error(ErrorCode.NOT_FOUND, f"n{node} is not a member of the metadata group")
        if node in membership.voters and len(membership.voters) == 1:
            raise _error(
                ErrorCode.REFUSED, f"n{node} is the only voter; removing it loses the data"
            )
        index = await host.conf_change(ConfChange(ConfChangeKind.REMOVE, node))
        log.info("removing n%d (entry %d)", node, index)
        kv = host.replica.state.get(sk.node_key(node))
        record = sk.decode_node(kv.value) if kv is not None else None
        if kv is not None and record is not None and not record.removed:
            record.removed = True
            with contextlib.suppress(ServiceError):
                await host.write(
                    md.Put(
                        sk.node_key(node),
                        sk.encode(record),
                        md.Precondition("version", kv.version),
                    )
                )
        if node != self._ctx.node_id:
            await self._await_applied(host, index)
        return f"n{node} removed from the metadata group"

    async def list_servers(self, request_id: int) -> api.Reply:
        """The members with their match indexes: only the leader tracks those, so a
        follower asks the leader (bounded by the metadata request timeout) and
        answers its own view (match 0) when that fails."""
        ctx, config = self._ctx, self._ctx.config
        status = self._metadata.status()
        host = self._metadata.host
        leader = status.leader
        if host is not None and leader and leader != ctx.node_id and not host.replica.is_leader:
            address = self._registry.client_address_of(leader)
            if address:
                with contextlib.suppress(RpcError):
                    reply = await call(
                        address,
                        api.ListServers(request_id),
                        cluster_name=config.cluster_name,
                        timeout_s=config.metadata.request_timeout_ms / 1000,
                    )
                    if isinstance(reply, api.ServersReply):
                        return api.ServersReply(request_id, reply.members, reply.leader)
        return api.ServersReply(request_id, status.members, status.leader)

    def node_infos(self) -> tuple[api.NodeInfo, ...]:
        return self._registry.infos()

    # ------------------------------------------------- leader duties

    async def _leader_duties_loop(self) -> None:
        """Rule 4, and rule 2's completion after a crash."""
        interval_s = max(0.05, 4 * self._ctx.config.raft.tick_ms / 1000)
        while True:
            await asyncio.sleep(interval_s)
            host = self._metadata.host
            if host is None or not host.replica.is_leader or self._ctx.phase == "stopping":
                continue
            if not self._metadata.provisioned():
                await self._provisioner.complete()
                continue
            await self._promote_learners(host)

    async def _promote_learners(self, host: MetadataHost) -> None:
        raft = host.replica.raft
        if not raft.membership.learners:
            return
        matches = match_indexes(raft)
        node = self._promotion.check(raft.membership.learners, matches, raft.last_index)
        if node is None:
            return
        try:
            index = await host.conf_change(ConfChange(ConfChangeKind.PROMOTE, node))
        except ServiceError as exc:
            log.debug("promotion of n%d deferred: %s", node, exc.message)
            return
        log.info("promoting n%d to voter (match %d, entry %d)", node, matches.get(node, 0), index)


class LocalMembership:
    """Membership of a node that keeps its metadata alone: a cluster of itself."""

    def __init__(self, ctx: NodeContext, metadata: LocalMetadata) -> None:
        self._ctx = ctx
        self._metadata = metadata

    async def start(self) -> None:
        if not self._ctx.node_id:
            await self._ctx.update_marker(node_id=1, founder=True)
        await self._metadata.open()
        self._ctx.phase = "running"

    async def provision(self, request: api.Provision) -> str:
        config = self._ctx.config
        if request.cluster_name and request.cluster_name != config.cluster_name:
            raise _error(
                ErrorCode.REFUSED,
                f"this node belongs to cluster {config.cluster_name!r}, "
                f"not {request.cluster_name!r}",
            )
        return "local metadata server: nothing to provision"

    async def join(self, request: api.Join) -> api.JoinReply:
        raise self._ctx.unavailable()

    async def add_server(self, node: int) -> str:
        raise self._ctx.unavailable()

    async def remove_server(self, node: int) -> str:
        raise self._ctx.unavailable()

    async def list_servers(self, request_id: int) -> api.Reply:
        status = self._metadata.status()
        return api.ServersReply(request_id, status.members, status.leader)

    def node_infos(self) -> tuple[api.NodeInfo, ...]:
        ctx, config = self._ctx, self._ctx.config
        return (
            api.NodeInfo(
                ctx.node_id,
                ctx.generation,
                config.peer_address,
                config.client_address,
                config.admin_address,
            ),
        )
