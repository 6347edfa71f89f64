"""Helpers for tests that run real ``catenary server`` processes (stopped by PID)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from catenary.api import messages as api
from catenary.runtime.rpc import RpcError, call

LAUNCH = "from catenary.cli.main import main; main()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NodeProcess:
    def __init__(self, directory: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.client_address = f"127.0.0.1:{free_port()}"
        self.peer_address = f"127.0.0.1:{free_port()}"
        self.admin_address = f"127.0.0.1:{free_port()}"
        self.args = list(args)
        self.env = env or {}
        self.log_path = directory / "node.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            LAUNCH,
            "server",
            "--data-dir",
            str(self.data_dir),
            "--client-address",
            self.client_address,
            "--peer-address",
            self.peer_address,
            "--admin-address",
            self.admin_address,
            *self.args,
        ]

    def start(self) -> NodeProcess:
        assert self.process is None or self.process.poll() is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, request: api.Request, timeout_s: float = 5.0) -> api.Reply:
        return asyncio.run(call(self.client_address, request, timeout_s=timeout_s))

    def wait_for(
        self, check: Callable[[api.NodeStatus], bool], what: str, timeout_s: float = 20.0
    ) -> api.NodeStatus:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"node exited ({self.process.returncode}):\n{self.log()}")
            try:
                reply = self.request(api.GetStatus(1), timeout_s=1.0)
            except RpcError as exc:
                last = exc
            else:
                assert isinstance(reply, api.StatusReply)
                if check(reply.status):
                    return reply.status
                last = reply.status
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last: {last}\n{self.log()}")

    def wait_serving(self) -> api.NodeStatus:
        return self.wait_for(lambda s: s.provisioned and s.leader == s.node != 0, "leadership")

    def terminate(self, timeout_s: float = 15.0) -> int:
        """SIGTERM by PID; the exit code (SIGKILL and fail if it does not stop in time)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"node did not stop on SIGTERM:\n{self.log()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
