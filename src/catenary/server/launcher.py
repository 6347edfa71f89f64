"""A local multi-node cluster of real ``catenary server`` processes (``catenary dev``).

Layout of the directory::

    cluster.json        cluster name and, per node: id, pid, addresses, paths
    node<N>.toml        the node's configuration file
    node<N>/            the node's data directory
    node<N>.log         the node's stderr/stdout (appended across restarts)

Rules:

1. A fresh directory: ports are picked free on 127.0.0.1; node 1 starts alone
   and provisions a cluster of one; every other node starts with node 1 as its
   seed, one after the other (each waits for the previous one to have its
   NodeId, so node ``N`` gets NodeId ``N``); then the launcher waits until the
   leader counts every node as a voter.
2. A directory with ``cluster.json``: the same cluster comes back — same name,
   ports and data — with every node started at once.  Asking for more nodes
   than recorded adds (joins) the missing ones; asking for fewer is refused.
3. Every process is started in its own session (a terminal's Ctrl-C reaches
   only the launcher) and stopped by PID: SIGTERM, then SIGKILL after
   ``stop_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from catenary.api.messages import GetStatus, NodeStatus, StatusReply
from catenary.runtime.rpc import RpcError, call
from catenary.server.config import ServerConfig, to_toml
from catenary.wire.address import parse_address

MANIFEST = "cluster.json"
# Nodes run the package's own entry point (``python -m catenary server``, the
# same command as the installed ``catenary`` script) in this interpreter.
NODE_COMMAND = ("-m", "catenary", "server")


class LaunchError(Exception):
    """The cluster did not come up (the message says which node and why)."""


class DevNode(msgspec.Struct, kw_only=True):
    node: int  # slot number, 1-based; equals the NodeId the node obtained
    pid: int = 0
    peer_address: str
    client_address: str
    admin_address: str
    data_dir: str
    config: str
    log: str


class Manifest(msgspec.Struct, kw_only=True):
    cluster_name: str
    nodes: list[DevNode]


def free_port(taken: set[int]) -> int:
    """A port free right now on 127.0.0.1, not in ``taken`` (which it joins)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port
    raise LaunchError("no free port found")


class DevCluster:
    """Start, watch and stop a local cluster (see the module rules)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        nodes: int = 3,
        cluster_name: str = "catenary-dev",
        settings: Sequence[str] = (),
        stop_timeout_s: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        if nodes < 1:
            raise LaunchError("--nodes must be at least 1")
        self.directory = Path(directory).resolve()
        self.wanted = nodes
        self.cluster_name = cluster_name
        self.settings = list(settings)
        self.stop_timeout_s = stop_timeout_s
        self.python = python
        self.nodes: list[DevNode] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.restarted = False

    # ---------------------------------------------------------- manifest

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def prepare(self) -> None:
        """Read the manifest (restart) or lay out a fresh cluster; write the configs."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            try:
                manifest = msgspec.json.decode(self.manifest_path.read_bytes(), type=Manifest)
            except (msgspec.DecodeError, OSError) as exc:
                raise LaunchError(f"{self.manifest_path}: unreadable ({exc})") from None
            if len(manifest.nodes) > self.wanted:
                raise LaunchError(
                    f"{self.manifest_path} records {len(manifest.nodes)} nodes; "
                    f"asked for {self.wanted} (removing nodes is an operator action)"
                )
            self.cluster_name = manifest.cluster_name
            self.nodes = manifest.nodes
            self.restarted = bool(self.nodes)
        taken = {
            parse_address(address)[1]
            for n in self.nodes
            for address in (n.peer_address, n.client_address, n.admin_address)
        }
        while len(self.nodes) < self.wanted:
            slot = len(self.nodes) + 1
            self.nodes.append(
                DevNode(
                    node=slot,
                    peer_address=f"127.0.0.1:{free_port(taken)}",
                    client_address=f"127.0.0.1:{free_port(taken)}",
                    admin_address=f"127.0.0.1:{free_port(taken)}",
                    data_dir=str(self.directory / f"node{slot}"),
                    config=str(self.directory / f"node{slot}.toml"),
                    log=str(self.directory / f"node{slot}.log"),
                )
            )
        first = self.nodes[0]
        for node in self.nodes:
            config = ServerConfig(
                cluster_name=self.cluster_name,
                node_name=f"dev-{node.node}",
                data_dir=node.data_dir,
                peer_address=node.peer_address,
                client_address=node.client_address,
                admin_address=node.admin_address,
                seeds=[] if node is first else [first.client_address],
            )
            Path(node.config).write_text(
                "# written by catenary dev\n" + to_toml(config, only_changed=True)
            )
        self.write_manifest()

    def write_manifest(self) -> None:
        manifest = Manifest(cluster_name=self.cluster_name, nodes=self.nodes)
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
        os.replace(tmp, self.manifest_path)

    # ----------------------------------------------------------- processes

    def command(self, node: DevNode) -> list[str]:
        args = [self.python, *NODE_COMMAND, "--config", node.config]
        for setting in self.settings:
            args += ["--set", setting]
        return args

    def spawn(self, node: DevNode) -> None:
        with open(node.log, "ab") as log:
            process = subprocess.Popen(
                self.command(node),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        self.processes[node.node] = process
        node.pid = process.pid
        self.write_manifest()

    def exited(self, node: DevNode) -> int | None:
        process = self.processes.get(node.node)
        return process.poll() if process is not None else None

    def log_tail(self, node: DevNode, chars: int = 2000) -> str:
        try:
            return Path(node.log).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> dict[int, int | None]:
        """SIGTERM every process, SIGKILL what is left after the bound; exit codes."""
        running = {n: p for n, p in sorted(self.processes.items()) if p.poll() is None}
        for process in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for process in running.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        return {n: p.returncode for n, p in sorted(self.processes.items())}

    # ------------------------------------------------------------- status

    async def status(self, node: DevNode, timeout_s: float = 0.5) -> NodeStatus | str:
        """The node's status, or why there is none."""
        code = self.exited(node)
        if code is not None:
            return f"exited({code})"
        try:
            reply = await call(
                node.client_address,
                GetStatus(1),
                cluster_name=self.cluster_name,
                timeout_s=timeout_s,
            )
        except RpcError:
            return "down"
        if isinstance(reply, StatusReply):
            return reply.status
        return "error"

    async def statuses(self) -> list[NodeStatus | str]:
        return list(await asyncio.gather(*(self.status(n) for n in self.nodes)))

    async def _wait(self, what: str, node: DevNode | None, check: object, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: object = "no answer yet"
        while time.monotonic() < deadline:
            for candidate in self.nodes if node is None else [node]:
                code = self.exited(candidate)
                if code is not None:
                    raise LaunchError(
                        f"n{candidate.node} exited with code {code} while waiting for {what}; "
                        f"log tail:\n{self.log_tail(candidate)}"
                    )
            statuses = await self.statuses()
            if check(statuses):  # type: ignore[operator]
                return
            last = statuses
            await asyncio.sleep(0.1)
        raise LaunchError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last}")

    async def start(self, timeout_s: float = 60.0) -> None:
        """Bring the cluster up (fresh or restarted) and wait until every node is a voter."""
        self.prepare()
        wanted = len(self.nodes)
        if self.restarted:
            known = [n for n in self.nodes if Path(n.data_dir).exists()]
            for node in known:
                self.spawn(node)
            new = [n for n in self.nodes if n not in known]
        else:
            first = self.nodes[0]
            self.spawn(first)
            await self._wait(
                "n1 to provision the cluster",
                first,
                lambda s: isinstance(s[0], NodeStatus) and s[0].provisioned and s[0].leader == 1,
                timeout_s,
            )
            new = self.nodes[1:]
        for node in new:
            self.spawn(node)
            index = self.nodes.index(node)
            await self._wait(
                f"n{node.node} to join",
                node,
                lambda s, i=index: isinstance(s[i], NodeStatus) and s[i].node != 0,
                timeout_s,
            )

        def all_voters(statuses: list[NodeStatus | str]) -> bool:
            for s in statuses:
                if isinstance(s, NodeStatus) and s.raft_state == "leader":
                    voters = [m for m in s.members if m.role == "voter"]
                    return len(voters) >= wanted and all(
                        isinstance(x, NodeStatus) and x.leader == s.node for x in statuses
                    )
            return False

        await self._wait(f"{wanted} voters and one leader", None, all_voters, timeout_s)
        for slot, status in enumerate(await self.statuses()):
            node = self.nodes[slot]
            if isinstance(status, NodeStatus) and status.node != node.node:
                # Possible only if a join was retried and an id was spent: record the truth.
                node.node = status.node
        self.write_manifest()


def status_line(cluster: DevCluster, statuses: list[NodeStatus | str]) -> str:
    parts = []
    for node, status in zip(cluster.nodes, statuses):
        if isinstance(status, NodeStatus):
            parts.append(f"n{node.node} {status.raft_state} t{status.term} c{status.commit_index}")
        else:
            parts.append(f"n{node.node} {status}")
    return " | ".join(parts)
