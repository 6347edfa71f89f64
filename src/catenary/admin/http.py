"""The HTTP admin API of one node (aiohttp), documented in ``docs/http-api.md``.

Theory of operation
-------------------
1. The app runs on the node's own event loop and only *reads* the node: it
   calls ``server.status()`` (a cheap snapshot, sync or async) and renders the
   node's Prometheus registry.  It never touches the Raft core directly, so it
   cannot block or reorder the host task that owns it.
2. ``/health`` answers 200 whenever the process can run a handler at all: it
   is a liveness probe and deliberately checks nothing else.
3. ``/ready`` answers 200 only once the node can serve: the cluster is
   provisioned and the node knows a metadata leader.  Otherwise 503 with the
   reason, so a load balancer or orchestrator keeps traffic away.
4. ``/metrics`` is the Prometheus text exposition of the node's own registry
   (never the process-global one, so two nodes in one process stay apart).
5. ``/v1/status`` is the ``NodeStatus`` as JSON (field names as in
   ``catenary.api.messages.NodeStatus``).
6. A failure while building a response is answered 500 with a JSON reason;
   the handler never lets an exception take the node down.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
from typing import Protocol

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from catenary.api.messages import NodeStatus, status_to_json

log = logging.getLogger(__name__)

SERVER_KEY = web.AppKey("catenary_server", object)


class AdminTarget(Protocol):
    """What the admin app needs of a node.

    The node also exposes its Prometheus ``CollectorRegistry`` as ``registry``
    or ``metrics.registry``.
    """

    def status(self) -> NodeStatus | Awaitable[NodeStatus]: ...


def registry_of(server: object) -> CollectorRegistry | None:
    """The node's own metrics registry, wherever the node keeps it."""
    for holder in (server, getattr(server, "metrics", None)):
        registry = getattr(holder, "registry", None)
        if isinstance(registry, CollectorRegistry):
            return registry
    return None


async def _status(server: AdminTarget) -> NodeStatus:
    result = server.status()
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, NodeStatus):
        raise TypeError(f"status() returned {type(result).__name__}, not NodeStatus")
    return result


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


def _server(request: web.Request) -> AdminTarget:
    server = request.app[SERVER_KEY]
    return server  # type: ignore[return-value]


async def health(request: web.Request) -> web.Response:
    return _json({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    try:
        status = await _status(_server(request))
    except Exception as exc:
        log.exception("admin /ready: status failed")
        return _json({"ready": False, "reason": f"status unavailable: {exc}"}, 503)
    if not status.provisioned:
        return _json({"ready": False, "reason": "the cluster is not provisioned"}, 503)
    if status.leader == 0:
        return _json({"ready": False, "reason": "no metadata leader known"}, 503)
    disk_full = getattr(_server(request), "disk_full", None)
    full = disk_full() if callable(disk_full) else ""
    if full:
        reason = f"disk full ({full}): writes refused until space returns; reads are served"
        return _json({"ready": False, "reason": reason, "disk_full": True}, 503)
    return _json({"ready": True, "leader": status.leader, "node": status.node})


async def metrics(request: web.Request) -> web.Response:
    registry = registry_of(request.app[SERVER_KEY])
    if registry is None:
        return _json({"error": "this node exposes no metrics registry"}, 500)
    try:
        body = generate_latest(registry)
    except Exception as exc:
        log.exception("admin /metrics: collecting failed")
        return _json({"error": f"collecting metrics failed: {exc}"}, 500)
    # CONTENT_TYPE_LATEST carries a charset parameter; aiohttp wants it as a header.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    try:
        node_status = await _status(_server(request))
    except Exception as exc:
        log.exception("admin /v1/status: status failed")
        return _json({"error": f"status unavailable: {exc}"}, 500)
    body = status_to_json(node_status)
    log_status = getattr(_server(request), "log_status", None)
    if callable(log_status):
        body["log_service"] = log_status()
    return _json(body)


def create_app(server: AdminTarget) -> web.Application:
    """The admin app for ``server`` (the node starts and binds it)."""
    app = web.Application()
    app[SERVER_KEY] = server
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)
    return app
