"""Running one node as a process: logging, signals, the event loop, the garbage collector."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable

from catenary.server.config import ServerConfig
from catenary.server.context import StartupError
from catenary.server.node import AdminAppFactory, Server

log = logging.getLogger("catenary.server")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(
    config: ServerConfig,
    admin_app: AdminAppFactory | None,
    stop_requested: Callable[[], bool],
) -> int:
    server = Server(config, admin_app=admin_app)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    if stop_requested():
        log.info("stop requested before the node started; exiting")
        return 0
    try:
        await server.start()
    except StartupError as exc:
        print(f"catenary server: {exc}", file=sys.stderr)
        await server.stop()
        return 2
    tune_gc(config.process.gc_gen0_threshold)
    return await server.run_until_stopped()


def tune_gc(gen0_threshold: int) -> None:
    """Collect the young generation less often; never scan what start-up built.

    The state loaded at start (keys, log tail) lives as long as the process:
    freezing it keeps every later collection from walking it again.  Garbage
    cycles are still collected, only in larger batches.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


def run_server(
    config: ServerConfig,
    *,
    admin_app: AdminAppFactory | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> int:
    """Run a node until SIGTERM/SIGINT; returns the process exit code.

    ``stop_requested`` tells whether a stop signal arrived before the event loop
    took the signals over (the caller's provisional handler recorded it).
    """
    if not __debug__:
        print(
            "catenary server: refusing to run with assertions disabled (python -O): "
            "they guard the protocol invariants",
            file=sys.stderr,
        )
        return 2
    _setup_logging(config.log_level)
    if config.network.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency where available
            log.warning("uvloop is not installed; using the asyncio event loop")
        else:
            return int(uvloop.run(_serve(config, admin_app, stop_requested)))
    return asyncio.run(_serve(config, admin_app, stop_requested))
