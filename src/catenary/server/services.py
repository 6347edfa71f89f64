"""The services one node is made of, each behind a narrow interface.

A node is a set of services: metadata (keys, leases, watches), cluster
membership (provisioning, joining, NodeIds, learner promotion, the node
registry) and, later, logs.  Request dispatch (``requests.RequestRouter``)
and the composition root (``node.Server``) depend on these protocols only.
Which implementations a node runs (replicated or local metadata) is decided
once, by ``node.make_services``; nothing else branches on the mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from catenary.api import messages as api
from catenary.core.metadata import types as md
from catenary.core.metadata.replica import GetQuery, ListQuery


class WatchSource(Protocol):
    """Where a watch reads changes from."""

    def changed_future(self) -> asyncio.Future[None]: ...
    def changes_since(
        self, version: int, key: str, prefix: bool, limit: int
    ) -> md.WatchBatch | md.Compacted: ...
    def revision_now(self) -> int: ...


class MetadataService(Protocol):
    """Keys, leases and watches of the cluster's metadata.

    Raises ``ServiceError`` (UNAVAILABLE, NOT_LEADER, ...) when it cannot
    serve; a write's result may be ``md.Rejected`` (the caller answers it).
    """

    async def write(self, command: md.Command) -> md.Result: ...
    async def read(self, query: GetQuery | ListQuery, *, stale: bool) -> Any: ...
    def read_many_future(self, keys: Sequence[str]) -> asyncio.Future[Any] | None:
        """Linearizable gets of ``keys`` as one read, or None to serve them one by one."""
        ...

    def write_many_future(self, commands: list[md.Command]) -> asyncio.Future[Any] | None:
        """``commands`` proposed together, each with its own outcome, or None: one by one."""
        ...

    def watch_source(self) -> WatchSource: ...
    def provisioned(self) -> bool: ...
    def status(self) -> api.NodeStatus: ...
    def disk_full(self) -> str:
        """Why writes are refused for want of disk space; "" when they are not."""
        ...

    async def prepare_stop(self) -> None:
        """Before the client port drains (a leader hands over leadership)."""
        ...

    async def stop(self) -> None: ...


class MembershipService(Protocol):
    """The node's place in the cluster: how it enters, who else is in, changes to who is."""

    async def start(self) -> None:
        """Enter the cluster: open, restart, join, provision, or wait to be provisioned."""
        ...

    async def provision(self, request: api.Provision) -> str: ...
    async def join(self, request: api.Join) -> api.JoinReply: ...
    async def add_server(self, node: int) -> str: ...
    async def remove_server(self, node: int) -> str: ...
    async def list_servers(self, request_id: int) -> api.Reply: ...
    def node_infos(self) -> tuple[api.NodeInfo, ...]: ...


class LogService(Protocol):
    """Logs: appends, reads, tails, trims, seals, reconfigurations (``logs.LogService``).

    Registered in ``Services.log`` by ``node.make_services`` for a node with the
    log-server role, and started and stopped by the composition root.
    Raises ``ServiceError`` (NOT_FOUND for an unknown log, SEALED, NOT_LEADER
    for chain changes asked of a follower, ...).
    """

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def append(
        self, log_id: int, payloads: Sequence[bytes], timeout_ms: int = 0
    ) -> api.LogAppendReply: ...
    async def read(self, request: api.LogRead) -> api.LogReadReply: ...
    async def find_tail(self, log_id: int) -> api.LogTailReply: ...
    async def trim(self, log_id: int, lsn: int) -> api.LogTrimReply: ...
    async def seal(self, log_id: int) -> api.LogTailReply: ...
    async def reconfigure(self, request: api.LogReconfigure) -> api.LogDescribeReply: ...
    async def describe(self, log_id: int) -> api.LogDescribeReply: ...
    def status(self) -> list[dict[str, object]]: ...
    def figures(self) -> dict[str, object]: ...


@dataclass(slots=True)
class Services:
    """The services of one node, as the composition root wired them."""

    metadata: MetadataService
    membership: MembershipService
    log: LogService | None = None
