"""What every service of one node shares: its configuration, identity, phase and lifecycle hooks.

The composition root (``Server``) creates one ``NodeContext`` and hands it to
each service; services never reach each other through it, only through the
narrow interfaces they are given.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Coroutine
from typing import Any

from catenary.api.errors import ServiceError
from catenary.api.messages import ErrorCode
from catenary.server.config import ServerConfig
from catenary.server.datadir import DataDir

log = logging.getLogger("catenary.server")


class StartupError(Exception):
    """The node cannot start (exit code 2): bad data dir, address in use, refused join."""


class NodeContext:
    """One node's shared state: config, data directory, phase, background tasks, failure."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.datadir: DataDir | None = None
        self.phase = "starting"  # starting | unprovisioned | joining | running | stopping | stopped
        self.stop_requested = asyncio.Event()
        self.fatal: str | None = None
        self.exit_code = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def node_id(self) -> int:
        return self.datadir.marker.node_id if self.datadir is not None else 0

    @property
    def generation(self) -> int:
        return self.datadir.marker.generation if self.datadir is not None else 0

    @property
    def founder(self) -> bool:
        return self.datadir is not None and self.datadir.marker.founder

    @property
    def stopping(self) -> bool:
        return self.phase in ("stopping", "stopped")

    def fail(self, reason: str, *, exit_code: int = 1) -> None:
        """Stop the node because it cannot go on (exit code 1; 2 for a refused configuration)."""
        if self.fatal is None:
            log.critical("stopping: %s", reason)
            self.fatal = reason
            self.exit_code = exit_code
        self.stop_requested.set()

    def unavailable(self) -> ServiceError:
        """Why the node cannot serve metadata yet (or any more), by phase."""
        if self.phase == "joining":
            return ServiceError(ErrorCode.UNAVAILABLE, "this node is still joining the cluster")
        if self.phase == "starting":
            return ServiceError(ErrorCode.UNAVAILABLE, "the node is starting")
        if self.phase == "stopping":
            return ServiceError(ErrorCode.UNAVAILABLE, "the node is shutting down")
        return ServiceError(
            ErrorCode.UNAVAILABLE, "the cluster is not provisioned yet (run catenary provision)"
        )

    async def update_marker(self, **changes: Any) -> None:
        """Change the data directory's marker durably (off the event loop)."""
        assert self.datadir is not None
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self.datadir.update, **changes)
        )

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a background task of the node; it is cancelled when the node stops."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("task %s failed: %r", name, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)

    async def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
