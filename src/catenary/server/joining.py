"""The joiner's side of the join protocol (the leader's side is ``membership``).

Rules:

1. A node without a NodeId sends ``Join(node=0)`` to its seeds in turn; a
   non-leader answers ``NOT_LEADER`` with the leader's address and the joiner
   goes there next (at most 16 hops a round).  Between rounds it waits
   ``join.retry_interval_ms``; it gives up after ``join.timeout_ms`` (0: never).
2. The NodeId in the ``JoinReply`` is persisted in the marker before the
   replica starts, so a crash right after joining restarts under that id.
3. A refusal (another cluster, a removed node, an unknown id, a stale
   generation) stops the node with exit code 2: retrying cannot help.
4. A restarted node announces itself the same way, ``Join(node=id)``, until
   its node record holds its generation and addresses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from catenary.api import messages as api
from catenary.api.messages import ErrorCode
from catenary.runtime.rpc import RpcError, call
from catenary.server.context import NodeContext, StartupError
from catenary.server.registry import NodeRegistry

log = logging.getLogger("catenary.server")

HOPS_MAX = 16


class Joiner:
    """Brings a node into its cluster through the seeds, or announces a restart."""

    def __init__(
        self,
        ctx: NodeContext,
        registry: NodeRegistry,
        *,
        leader: Callable[[], int | None],
        provisioned: Callable[[], bool],
        start_replica: Callable[[], Awaitable[None]],
    ) -> None:
        self._ctx = ctx
        self._registry = registry
        self._leader = leader  # the leader this node knows, None before the replica runs
        self._provisioned = provisioned
        self._start_replica = start_replica

    def _request(self) -> api.Join:
        ctx, config = self._ctx, self._ctx.config
        return api.Join(
            0,
            config.cluster_name,
            ctx.node_id,
            config.peer_address,
            config.client_address,
            config.admin_address,
            ctx.generation,
        )

    def _targets(self) -> list[str]:
        ctx, config = self._ctx, self._ctx.config
        targets: list[str] = []
        for address in config.seeds:
            if address not in targets:
                targets.append(address)
        leader = self._leader()
        if leader is not None:
            address = self._registry.client_address_of(leader) if leader else ""
            if address:
                targets.insert(0, address)
            for node in self._registry.nodes():
                record = self._registry.get(node)
                if node != ctx.node_id and record and record.client_address not in targets:
                    targets.append(record.client_address)
            if not targets:
                targets.append(config.client_address)
        return targets

    async def send(self) -> api.JoinReply | None:
        """One round over the seeds (following leader hints); the reply or None (rule 1)."""
        ctx, config = self._ctx, self._ctx.config
        timeout_s = config.join.request_timeout_ms / 1000
        targets = self._targets()
        hops = 0
        while targets and hops < HOPS_MAX:
            target = targets.pop(0)
            hops += 1
            try:
                reply = await call(
                    target,
                    self._request(),
                    cluster_name=config.cluster_name,
                    timeout_s=timeout_s,
                    frame_bytes_max=config.network.frame_bytes_max,
                )
            except RpcError as exc:
                if exc.refused is not None and exc.refused.code == "cluster":
                    ctx.fail(f"seed {target} refused this node: {exc.refused.reason}", exit_code=2)
                    return None
                log.info("join via %s: %s", target, exc)
                continue
            if isinstance(reply, api.JoinReply):
                return reply
            if isinstance(reply, api.ErrorReply):
                if reply.code == ErrorCode.NOT_LEADER and reply.leader_address:
                    if reply.leader_address not in targets[:1]:
                        targets.insert(0, reply.leader_address)
                    continue
                if reply.code in (ErrorCode.REFUSED, ErrorCode.NOT_FOUND):
                    ctx.fail(f"join refused by {target}: {reply.message}", exit_code=2)
                    return None
                log.info("join via %s: %s (%s)", target, reply.message, reply.code)
        return None

    async def join_loop(self) -> None:
        """Rules 1-3."""
        ctx, config = self._ctx, self._ctx.config
        started = time.monotonic()
        while not ctx.stop_requested.is_set():
            reply = await self.send()
            if reply is not None:
                log.info("joined cluster %r as node %d", config.cluster_name, reply.node)
                await ctx.update_marker(node_id=reply.node)
                try:
                    await self._start_replica()
                except StartupError as exc:
                    ctx.fail(str(exc))
                    return
                self._registry.learn(reply.members)
                ctx.phase = "running"
                return
            if ctx.fatal:
                return
            if (
                config.join.timeout_ms
                and time.monotonic() - started > config.join.timeout_ms / 1000
            ):
                ctx.fail(f"could not join via {', '.join(config.seeds)} within the join timeout")
                return
            await asyncio.sleep(config.join.retry_interval_ms / 1000)

    async def announce_loop(self) -> None:
        """Rule 4: after a (re)start, record this generation and addresses in the node record."""
        ctx, config = self._ctx, self._ctx.config
        while not ctx.stop_requested.is_set():
            record = self._registry.get(ctx.node_id)
            if (
                record is not None
                and record.generation == ctx.generation
                and record.peer_address == config.peer_address
                and record.client_address == config.client_address
                and record.admin_address == config.admin_address
            ):
                return
            if self._provisioned():
                reply = await self.send()
                if reply is not None:
                    log.info("announced generation %d", ctx.generation)
                    return
                if ctx.fatal:
                    return
            await asyncio.sleep(config.join.retry_interval_ms / 1000)
            self._registry.refresh()
