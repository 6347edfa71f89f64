"""``Server``: the composition root of one node — configuration to wiring to lifecycle.

A node is a set of services behind narrow interfaces (``services``): the
metadata service (``metadata``: replicated or local), cluster membership
(``membership``, ``joining``, ``registry``; its decisions are the sans-IO
``catenary.core.membership``) and, later, the log service.  Client requests
reach them through the client port and ``requests.RequestRouter``, which
validates and dispatches.  This module only builds and runs them.

Theory of operation
-------------------
1. Wire.  ``make_services`` picks the services for the configuration — the
   one place that looks at ``metadata.server`` — and the router, the client
   port and the HTTP admin app are built around them.
2. Start.  Open and lock the data directory (refusing another cluster's),
   bump the generation durably, bind the client port (and the HTTP admin app
   when given), then let membership bring the node into its cluster (open the
   local store; restart; join; provision; or wait to be provisioned).
3. Stop (SIGTERM/SIGINT).  The metadata service prepares (a leader with other
   voters hands leadership to the most caught-up voter, bounded by
   ``shutdown.transfer_timeout_ms``); the client port drains and closes; the
   node's background tasks are cancelled; the services stop (writes in
   flight: INDETERMINATE); the admin app stops and the data directory is
   unlocked.  Exit 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from catenary.api import messages as api
from catenary.runtime.client_port import ClientPort
from catenary.runtime.metrics import ServerMetrics
from catenary.server.config import ServerConfig
from catenary.server.context import NodeContext, StartupError
from catenary.server.datadir import DataDir, DataDirError
from catenary.server.logs import LogService
from catenary.server.membership import ClusterMembership, LocalMembership
from catenary.server.metadata import LocalMetadata, ReplicatedMetadata
from catenary.server.registry import NodeRegistry
from catenary.server.requests import RequestRouter
from catenary.server.services import Services
from catenary.wire.address import parse_address

log = logging.getLogger("catenary.server")

AdminAppFactory = Callable[["Server"], Any]  # -> aiohttp.web.Application

__all__ = ["AdminAppFactory", "Server", "StartupError", "make_services"]


def make_services(ctx: NodeContext, metrics: ServerMetrics) -> Services:
    """The services of a node with this configuration: the one place that picks the mode."""
    logs_on = "log-server" in ctx.config.roles
    if ctx.config.metadata.server == "local":
        local = LocalMetadata(ctx)
        local_membership = LocalMembership(ctx, local)
        local_logs = (
            LogService(
                ctx,
                local,
                local_membership,
                is_leader=lambda: True,
                leader_address=lambda: (ctx.node_id, ctx.config.client_address),
            )
            if logs_on
            else None
        )
        return Services(metadata=local, membership=local_membership, log=local_logs)
    registry = NodeRegistry(ctx)
    replicated = ReplicatedMetadata(ctx, registry, metrics)
    membership = ClusterMembership(ctx, replicated, registry)
    logs = None
    if logs_on:
        logs = LogService(
            ctx,
            replicated,
            membership,
            is_leader=replicated.is_leader,
            leader_address=replicated.leader,
        )
        replicated.on_transport.append(logs.attach_transport)
    return Services(metadata=replicated, membership=membership, log=logs)


class Server:
    """One node (see the module rules)."""

    def __init__(self, config: ServerConfig, *, admin_app: AdminAppFactory | None = None) -> None:
        self.config = config
        self.ctx = NodeContext(config)
        self.metrics = ServerMetrics(self.status)
        self.services = make_services(self.ctx, self.metrics)
        if self.services.log is not None:
            self.metrics.watch_logs(self.services.log.figures)
        self.router = RequestRouter(self.ctx, self.services)
        self.port = ClientPort(
            self.router,
            self.metrics,
            config.network.client_port_options(config.metadata),
            metadata=self.router,
        )
        self._admin_app_factory = admin_app
        self._admin_runner: Any = None

    @property
    def node_id(self) -> int:
        return self.ctx.node_id

    @property
    def generation(self) -> int:
        return self.ctx.generation

    @property
    def phase(self) -> str:
        return self.ctx.phase

    @property
    def registry(self) -> Any:
        """The prometheus_client CollectorRegistry of this node."""
        return self.metrics.registry

    def status(self) -> api.NodeStatus:
        return self.services.metadata.status()

    def log_status(self) -> dict[str, object]:
        """The logs this node knows and its log service's counters (``/v1/status``)."""
        logs = self.services.log
        if logs is None:
            return {}
        return {"logs": logs.status(), "figures": logs.figures()}

    def disk_full(self) -> str:
        """Why writes wait for disk space ("" when they do not): ``/ready`` reports it."""
        return self.services.metadata.disk_full()

    # ----------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Rule 2."""
        config, ctx = self.config, self.ctx
        loop = asyncio.get_running_loop()
        try:
            ctx.datadir = await loop.run_in_executor(
                None,
                lambda: DataDir.open(
                    config.data_dir,
                    cluster_name=config.cluster_name,
                    metadata_server=config.metadata.server,
                ),
            )
            generation = await loop.run_in_executor(None, ctx.datadir.bump_generation)
        except DataDirError as exc:
            raise StartupError(str(exc)) from None
        log.info(
            "data dir %s: cluster %r, node %s, generation %d",
            ctx.datadir.path,
            config.cluster_name,
            ctx.node_id or "(none yet)",
            generation,
        )
        host, port = parse_address(config.client_address)
        try:
            await self.port.start(host, port)
        except OSError as exc:
            raise StartupError(
                f"client_address {config.client_address}: cannot listen: {exc.strerror or exc}"
            ) from None
        await self._start_admin()
        await self.services.membership.start()
        if self.services.log is not None:
            await self.services.log.start()
        log.info(
            "node ready: client %s, peer %s, admin %s",
            config.client_address,
            config.peer_address,
            config.admin_address or "(off)",
        )

    async def _start_admin(self) -> None:
        if self._admin_app_factory is None or not self.config.admin_address:
            return
        from aiohttp import web

        host, port = parse_address(self.config.admin_address)
        app = self._admin_app_factory(self)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(
                f"admin_address {self.config.admin_address}: cannot listen: {exc.strerror or exc}"
            ) from None
        self._admin_runner = runner

    def request_stop(self) -> None:
        self.ctx.stop_requested.set()

    def fail(self, reason: str, *, exit_code: int = 1) -> None:
        """Stop the node because it cannot go on (exit code 1; 2 for a refused configuration)."""
        self.ctx.fail(reason, exit_code=exit_code)

    async def run_until_stopped(self) -> int:
        """Serve until asked to stop or failing (``fail``); then stop. Returns the exit code."""
        await self.ctx.stop_requested.wait()
        await self.stop()
        return self.ctx.exit_code if self.ctx.fatal else 0

    async def stop(self) -> None:
        """Rule 3."""
        ctx = self.ctx
        if ctx.phase == "stopped":
            return
        ctx.phase = "stopping"
        log.info("stopping")
        services = self.services
        await services.metadata.prepare_stop()
        await self.port.drain(self.config.shutdown.drain_timeout_ms / 1000)
        await ctx.cancel_tasks()
        await self.port.close()
        if services.log is not None:
            await services.log.stop()
        await services.metadata.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if ctx.datadir is not None:
            ctx.datadir.close()
        ctx.phase = "stopped"
        log.info("stopped")
