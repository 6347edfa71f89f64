"""An N-node cluster of real ``catenary server`` processes that faults can be done to.

Theory of operation
-------------------
1. Placement.  With a ``Network`` every node runs inside its own namespace
   (``ip netns exec``, which execs the server: the PID we hold is the
   server's) and binds its namespace address; otherwise every node binds
   127.0.0.1 on free ports.  Clients in this process reach either.  Nodes
   find each other as ``catenary dev`` does: node 1 provisions a cluster of
   one, every other node joins with node 1's client address as its seed and
   advertises the peer address it binds (the namespace address).
2. Disks.  With ``small_disks`` every node's data lives on its own tmpfs
   (``SmallDisk``), mounted before the first start, unmounted at ``close``.
3. Faults on processes are signals by PID: SIGKILL (then ``start`` again on
   the same data), SIGSTOP and SIGCONT.  A node that exits by itself is
   noticed by ``exited`` and reported by the runner.
4. ``close`` stops every process it started (SIGCONT, SIGTERM, SIGKILL after
   a bound), unmounts the disks and removes the network; registered with
   ``atexit`` and safe to call twice.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from catenary.api.messages import NodeStatus
from catenary.client import CatenaryError, Client
from catenary.testing.faults.disk import SmallDisk
from catenary.testing.faults.net import Network

_LAUNCH = "from catenary.cli.main import main; main()"
CLUSTER_NAME = "catenary-faults"


class ClusterError(Exception):
    """The cluster did not come up (the message says which node and why)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FaultNode:
    index: int  # 1-based; the NodeId it obtains when the cluster forms in order
    directory: Path
    client_address: str
    peer_address: str
    disk: SmallDisk | None = None
    admin_address: str = ""  # the HTTP admin API, when the cluster was made with ``admin``
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    exits: list[int] = field(default_factory=list)  # exit codes seen (kills included)

    @property
    def data_dir(self) -> Path:
        return self.directory / "disk" / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class FaultCluster:
    def __init__(
        self,
        directory: Path,
        nodes: int,
        *,
        network: Network | None = None,
        small_disks: bool = False,
        disk_mb: int = 256,
        env: Mapping[str, str] | None = None,
        settings: tuple[str, ...] = (),
        admin: bool = False,
    ) -> None:
        self.directory = directory
        self.network = network
        self.env = dict(env or {})
        self.settings = settings
        self.nodes: list[FaultNode] = []
        self._closed = False
        for index in range(1, nodes + 1):
            node_dir = directory / f"node{index}"
            if network is not None:
                ip = network.ip(index)
                client, peer, http = f"{ip}:5123", f"{ip}:5124", f"{ip}:5125"
            else:
                client, peer = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
                http = f"127.0.0.1:{_free_port()}"
            disk = SmallDisk(node_dir / "disk", disk_mb) if small_disks else None
            self.nodes.append(FaultNode(index, node_dir, client, peer, disk, http if admin else ""))
        atexit.register(self.close)

    def node(self, index: int) -> FaultNode:
        return self.nodes[index - 1]

    @property
    def addresses(self) -> list[str]:
        return [n.client_address for n in self.nodes]

    # ------------------------------------------------------- processes

    def command(self, node: FaultNode) -> list[str]:
        args = [
            sys.executable, "-c", _LAUNCH, "server",
            "--cluster-name", CLUSTER_NAME,
            "--node-name", f"faults-{node.index}",
            "--data-dir", str(node.data_dir),
            "--client-address", node.client_address,
            "--peer-address", node.peer_address,
            "--admin-address", node.admin_address,
        ]  # fmt: skip
        if node.index != 1:
            args += ["--seed", self.nodes[0].client_address]
        for setting in self.settings:
            args += ["--set", setting]
        prefix = self.network.exec_prefix(node.index) if self.network is not None else []
        return prefix + args

    def start(self, index: int) -> None:
        node = self.node(index)
        assert not node.running(), f"n{index} is already running"
        node.directory.mkdir(parents=True, exist_ok=True)
        if node.disk is not None and not node.disk.mounted:
            node.disk.mount()
        with node.log_path.open("ab") as log:
            log.write(f"--- start {node.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            node.process = subprocess.Popen(
                self.command(node),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True,
            )
        node.starts += 1
        node.paused = False

    def kill(self, index: int) -> None:
        node = self.node(index)
        if node.process is None or node.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.process.pid, signal.SIGKILL)
        node.exits.append(node.process.wait(timeout=10))
        node.paused = False

    def pause(self, index: int) -> None:
        node = self.node(index)
        if node.running():
            assert node.process is not None
            os.kill(node.process.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, index: int) -> None:
        node = self.node(index)
        if node.running() and node.paused:
            assert node.process is not None
            os.kill(node.process.pid, signal.SIGCONT)
        node.paused = False

    def exited(self, index: int) -> int | None:
        """The exit code of a node that stopped by itself (not by ``kill``), once."""
        node = self.node(index)
        if node.process is None:
            return None
        code = node.process.poll()
        if code is None:
            return None
        node.exits.append(code)
        node.process = None
        return code

    # ----------------------------------------------------------- status

    async def status(self, index: int, timeout_s: float = 0.5) -> NodeStatus | None:
        node = self.node(index)
        if not node.running() or node.paused:
            return None
        # Through the public client (one connection, one attempt), as an operator's
        # script would ask: the harness stands outside the node like any user.
        try:
            async with Client(
                [node.client_address],
                cluster_name=CLUSTER_NAME,
                timeout_s=timeout_s,
                attempt_timeout_s=timeout_s,
                connect_timeout_s=timeout_s,
            ) as client:
                return await client.status(node.client_address, timeout_s=timeout_s)
        except (CatenaryError, OSError, TimeoutError):
            return None

    async def statuses(self) -> list[NodeStatus | None]:
        return list(await asyncio.gather(*(self.status(n.index) for n in self.nodes)))

    async def leader(self) -> int | None:
        """The node that says it leads (the highest term wins), or None."""
        best: tuple[int, int] | None = None
        for status in await self.statuses():
            if (
                status is not None
                and status.raft_state == "leader"
                and (best is None or status.term > best[0])
            ):
                best = (status.term, status.node)
        if best is None:
            return None
        for node in self.nodes:
            if node.index == best[1]:
                return node.index
        return best[1]

    async def _wait(
        self, what: str, check: Callable[[list[NodeStatus | None]], bool], timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise ClusterError(
                        f"n{node.index} exited ({node.process.returncode}) while waiting for "
                        f"{what}; log tail:\n{node.log_tail()}"
                    )
            statuses = await self.statuses()
            if check(statuses):
                return
            last = statuses
            await asyncio.sleep(0.1)
        raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last}")

    async def start_all(self, timeout_s: float = 60.0) -> None:
        """Form the cluster: n1 provisions, the others join one by one, all voters."""
        self.start(1)
        await self._wait(
            "n1 to provision",
            lambda s: s[0] is not None and s[0].provisioned and s[0].leader == s[0].node != 0,
            timeout_s,
        )
        for node in self.nodes[1:]:
            self.start(node.index)
            i = node.index - 1
            await self._wait(
                f"n{node.index} to join",
                lambda s, i=i: s[i] is not None and s[i].node != 0,  # type: ignore[misc]
                timeout_s,
            )
        wanted = len(self.nodes)

        def all_voters(statuses: list[NodeStatus | None]) -> bool:
            for s in statuses:
                if s is not None and s.raft_state == "leader":
                    voters = [m for m in s.members if m.role == "voter"]
                    return len(voters) >= wanted and all(
                        x is not None and x.leader == s.node for x in statuses
                    )
            return False

        await self._wait(f"{wanted} voters and one leader", all_voters, timeout_s)

    def close(self, stop_timeout_s: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        running = [n for n in self.nodes if n.running()]
        for node in running:
            assert node.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.process.pid, signal.SIGCONT)
                os.kill(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout_s
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
        for node in self.nodes:
            if node.disk is not None:
                node.disk.unmount()
        if self.network is not None:
            self.network.close()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
