"""``Server``: the composition root of one node — configuration to wiring to lifecycle.

Theory of operation
-------------------
1. Start.  Open and lock the data directory (refusing another cluster's),
   bump the generation durably, bind the client port (and the HTTP admin app
   when given), then one of:

   - ``metadata.server = "local"``: open the local store; serve.
   - the node has a NodeId (restart): load Raft state from the storage engine,
     start the metadata host and the peer transport, and announce the new
     generation to the leader (a ``Join`` naming the id) in the background;
   - no NodeId and seeds configured: join (below);
   - no NodeId, no seeds: provision a cluster of one when auto-provisioning is
     on (the default unless ``production``), else wait for ``Provision``.

2. Provision.  The node takes NodeId 1 (persisted in the marker, with
   ``founder``), starts Raft with itself as the only voter, and once leader
   writes ``/catenary/cluster``, ``/catenary/nodes/1`` and
   ``/catenary/next_node_id``.  Each write is idempotent (create-if-absent), and
   a founder that is leader completes a half-done provisioning after a crash.

3. Join.  The joiner sends ``Join(node=0)`` to a seed; a non-leader answers
   ``NOT_LEADER`` with the leader's address and the joiner goes there.  The
   leader takes an id by compare-and-set on ``/catenary/next_node_id`` (never
   reused), writes the node record (create-if-absent), adds the node to Raft
   as a learner, and answers ``JoinReply``.  The joiner persists its id before
   starting Raft.  The leader promotes a learner to voter once its match index
   is within ``raft.promote_lag_entries_max`` of the leader's last index.  A
   restarted node's ``Join(node=id)`` records its new generation and addresses
   (an older generation than the recorded one is refused).

4. Requests.  Writes and linearizable reads go to the leader's host; on a
   follower they answer ``NOT_LEADER`` with the leader's client address.  Stale
   reads, watches, status and node lists are answered locally.  Client writes
   under ``/catenary/`` are refused: only the node writes its system keys.

5. Stop (SIGTERM/SIGINT).  A leader with other voters first hands leadership
   to the most caught-up voter (bounded by ``shutdown.transfer_timeout_ms``);
   then the client port closes, the host finishes its Ready and fails what is
   left (writes in flight: INDETERMINATE), the transport, the writer thread and
   the admin app stop, and the data directory is unlocked.  Exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from random import Random
from typing import Any, Protocol

from catenary.api import messages as api
from catenary.api.errors import ErrorCode, ServiceError
from catenary.core.metadata import types as md
from catenary.core.metadata.lessor import LessorConfig
from catenary.core.metadata.replica import (
    GetQuery,
    ListQuery,
    MetadataReplica,
    MultiGetQuery,
    ReplicaConfig,
)
from catenary.core.metadata.state import MetadataConfig
from catenary.core.raft.node import RaftNode
from catenary.core.raft.types import ConfChange, ConfChangeKind, Membership, Message
from catenary.persist.raft_storage import RaftStorage
from catenary.runtime import public
from catenary.runtime.client_port import (
    Begun,
    ClientPort,
    ClientPortConfig,
    Emit,
)
from catenary.runtime.host import HostConfig, MetadataHost
from catenary.runtime.local_host import LocalHostConfig, LocalMetadataHost
from catenary.runtime.metrics import ServerMetrics
from catenary.runtime.rpc import RpcError, call
from catenary.server import system_keys as sk
from catenary.server.config import ServerConfig, parse_address
from catenary.server.datadir import DataDir, DataDirError
from catenary.storage.fs import OsFileSystem
from catenary.storage.store import RecoveryReport, StoreConfig

log = logging.getLogger("catenary.server")

AdminAppFactory = Callable[["Server"], Any]  # -> aiohttp.web.Application


class StartupError(Exception):
    """The node cannot start (exit code 2): bad data dir, address in use, refused join."""


class PeerLink(Protocol):
    """What the node needs of the peer transport."""

    async def start(self) -> None: ...
    def send(self, peer_id: int, message: Message) -> object: ...
    def set_peer_address(self, peer_id: int, address: str | None) -> None: ...
    async def close(self) -> None: ...


def _accepted(result: md.Result) -> md.Result:
    """The result of an applied write, or the error its refusal answers."""
    if isinstance(result, md.Rejected):
        code = {
            "too_large": ErrorCode.TOO_LARGE,
            "limit": ErrorCode.OVERLOADED,
        }.get(result.code, ErrorCode.BAD_REQUEST)
        raise _error(code, result.message)
    return result


def _get_replies(requests: list[api.Get], answer: Any) -> list[api.Reply]:
    revision = answer.revision
    return [
        api.GetReply(request.id, public.key_value(kv), revision, 0)
        for request, kv in zip(requests, answer.values, strict=True)
    ]


def _put_replies(requests: list[api.Put], outcomes: list[Any]) -> list[api.Reply]:
    replies: list[api.Reply] = []
    for request, outcome in zip(requests, outcomes, strict=True):
        if isinstance(outcome, ServiceError):
            replies.append(outcome.reply(request.id))
            continue
        try:
            replies.append(api.WriteReply(request.id, public.write_result(_accepted(outcome))))
        except ServiceError as exc:
            replies.append(exc.reply(request.id))
    return replies


def _no_replies(answer: Any) -> list[api.Reply]:
    return []


def _error(code: ErrorCode, message: str) -> ServiceError:
    return ServiceError(code, message)


class Server:
    """One node (see the module rules)."""

    def __init__(self, config: ServerConfig, *, admin_app: AdminAppFactory | None = None) -> None:
        self.config = config
        self.metrics = ServerMetrics(self.status)
        self._admin_app_factory = admin_app
        self._admin_runner: Any = None
        self.datadir: DataDir | None = None
        self.host: MetadataHost | None = None
        self.local: LocalMetadataHost | None = None
        self.transport: PeerLink | None = None
        self.port = ClientPort(
            self,
            self.metrics,
            ClientPortConfig(
                frame_bytes_max=config.network.frame_bytes_max,
                handshake_timeout_ms=config.network.handshake_timeout_ms,
                connections_max=config.network.client_connections_max,
                inflight_max=config.network.client_inflight_per_connection_max,
                watches_max=config.metadata.watches_per_connection_max,
            ),
            metadata=self,
        )
        self.phase = "starting"  # starting | unprovisioned | joining | running | stopping
        self._stop_requested = asyncio.Event()
        self._fatal: str | None = None
        self._exit_code = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._nodes: dict[int, sk.NodeRecord] = {}
        self._nodes_revision = -1
        self._nodes_refreshed_s = 0.0
        self._provision_lock = asyncio.Lock()
        self._promote_marks: dict[int, int] = {}  # learner -> leader's last index at last check
        self._join_lock = asyncio.Lock()

    # ------------------------------------------------------------ identity

    @property
    def node_id(self) -> int:
        return self.datadir.marker.node_id if self.datadir is not None else 0

    @property
    def generation(self) -> int:
        return self.datadir.marker.generation if self.datadir is not None else 0

    @property
    def registry(self) -> Any:
        """The prometheus_client CollectorRegistry of this node."""
        return self.metrics.registry

    def identity(self) -> tuple[str, int, int]:
        return self.config.cluster_name, self.node_id, self.generation

    # ----------------------------------------------------------- lifecycle

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        try:
            self.datadir = await loop.run_in_executor(
                None,
                lambda: DataDir.open(
                    config.data_dir,
                    cluster_name=config.cluster_name,
                    metadata_server=config.metadata.server,
                ),
            )
        except DataDirError as exc:
            raise StartupError(str(exc)) from None
        generation = await loop.run_in_executor(None, self.datadir.bump_generation)
        log.info(
            "data dir %s: cluster %r, node %s, generation %d",
            self.datadir.path,
            config.cluster_name,
            self.node_id or "(none yet)",
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
        if config.metadata.server == "local":
            await self._start_local()
            self.phase = "running"
        elif self.node_id:
            await self._start_replica(founder=self.datadir.marker.founder)
            self.phase = "running"
            self._spawn(self._announce_loop(), "announce")
        elif config.seeds:
            self.phase = "joining"
            self._spawn(self._join_loop(), "join")
        elif config.provision_automatically:
            try:
                await self._provision_self()
            except ServiceError as exc:
                # Raft is running; the leader-duties loop finishes the system keys.
                log.warning("provisioning still in progress: %s", exc.message)
        else:
            self.phase = "unprovisioned"
            log.info("waiting to be provisioned (catenary provision) or configured with seeds")
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
        self._stop_requested.set()

    def fail(self, reason: str, *, exit_code: int = 1) -> None:
        """Stop the node because it cannot go on (exit code 1; 2 for a refused configuration)."""
        if self._fatal is None:
            log.critical("stopping: %s", reason)
            self._fatal = reason
            self._exit_code = exit_code
        self._stop_requested.set()

    async def run_until_stopped(self) -> int:
        """Serve until asked to stop or failing (``fail``); then stop. Returns the exit code."""
        await self._stop_requested.wait()
        await self.stop()
        return self._exit_code if self._fatal else 0

    async def stop(self) -> None:
        if self.phase == "stopped":
            return
        self.phase = "stopping"
        log.info("stopping")
        if self.host is not None and self.host.running and self.host.failure is None:
            await self._transfer_leadership()
        await self.port.drain(self.config.shutdown.drain_timeout_ms / 1000)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.port.close()
        if self.host is not None:
            await self.host.stop()
        if self.transport is not None:
            await self.transport.close()
        if self.local is not None:
            await self.local.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.datadir is not None:
            self.datadir.close()
        self.phase = "stopped"
        log.info("stopped")

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("task %s failed: %r", name, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)

    # --------------------------------------------------------- local mode

    async def _start_local(self) -> None:
        assert self.datadir is not None
        if not self.node_id:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: self._marker_update(node_id=1, founder=True)
            )
        md_config = self.config.metadata
        local = LocalMetadataHost(
            self.datadir.subdir("metadata-local"),
            LocalHostConfig(
                key_bytes_max=md_config.key_bytes_max,
                value_bytes_max=md_config.value_bytes_max,
                watch_history_max=md_config.watch_history_max,
                snapshot_every_writes=md_config.local_snapshot_every_writes,
                segment_bytes_max=self.config.storage.segment_bytes_max,
                index_checkpoint_records=self.config.storage.index_checkpoint_records,
                record_bytes_max=self.config.storage.record_bytes_max,
                lease_checkpoint_interval_ms=md_config.lease_checkpoint_interval_ms,
                tick_ms=self.config.raft.tick_ms,
                queue_max=md_config.queue_max,
                batch_max=min(md_config.batch_max, 1024),
                request_timeout_ms=md_config.request_timeout_ms,
            ),
            on_failure=self.fail,
        )
        try:
            await local.start()
        except Exception as exc:
            raise StartupError(f"local metadata store: {exc}") from exc
        # Only now: the node serves (and reports itself provisioned) once the store is open.
        self.local = local

    def _marker_update(self, **changes: Any) -> None:
        assert self.datadir is not None
        self.datadir.update(**changes)

    # ------------------------------------------------------ replicated mode

    def _store_config(self) -> StoreConfig:
        storage = self.config.storage
        return StoreConfig(
            segment_bytes_max=storage.segment_bytes_max,
            index_checkpoint_records=storage.index_checkpoint_records,
            record_bytes_max=storage.record_bytes_max,
        )

    async def _start_replica(self, *, founder: bool) -> None:
        assert self.datadir is not None and self.node_id
        config = self.config
        loop = asyncio.get_running_loop()
        directory = self.datadir.subdir("raft")

        def load() -> tuple[RaftStorage, Any]:
            storage = RaftStorage.open(OsFileSystem(), directory, self._store_config())
            return storage, storage.load()

        try:
            storage, (hard_state, snapshot, entries) = await loop.run_in_executor(None, load)
        except Exception as exc:
            raise StartupError(f"raft storage in {directory}: {exc}") from exc
        log_store_recovery(f"raft log in {directory}", storage.store_recovery)
        for note in storage.recovery_notes:
            log.warning("raft storage recovery: %s", note)
        md_config = config.metadata
        replica = MetadataReplica(
            self.node_id,
            config.raft.raft_config(),
            Random(int.from_bytes(os.urandom(8), "big")),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            # The founder's first membership is in no log entry: give it on every
            # start; entries and snapshots after it take precedence.
            initial_membership=Membership(voters=(self.node_id,)) if founder else None,
            config=ReplicaConfig(
                lessor=LessorConfig(checkpoint_interval_ms=md_config.lease_checkpoint_interval_ms),
                max_pending_writes=config.raft.max_pending_proposals,
                max_pending_reads=config.raft.max_pending_reads,
            ),
            state_config=MetadataConfig(
                key_bytes_max=md_config.key_bytes_max,
                value_bytes_max=md_config.value_bytes_max,
                watch_history_max=md_config.watch_history_max,
            ),
        )
        transport = self._make_transport()
        self.transport = transport
        self.host = MetadataHost(
            replica,
            storage,
            lambda message: _ignore(transport.send(message.dst, message)),
            HostConfig(
                tick_ms=config.raft.tick_ms,
                queue_max=md_config.queue_max,
                batch_max=md_config.batch_max,
                request_timeout_ms=md_config.request_timeout_ms,
            ),
            self.metrics,
            leader_address=self._client_address_of,
            on_applied=self._on_applied,
            on_failure=self.fail,
        )
        self._refresh_nodes(force=True)
        try:
            await transport.start()
        except OSError as exc:
            raise StartupError(
                f"peer_address {config.peer_address}: cannot listen: {exc.strerror or exc}"
            ) from None
        if replica.raft.membership.voters == (self.node_id,):
            # The only voter: no one else could win, so skip the election timeout.
            replica.raft.campaign()
        self.host.start()
        self._spawn(self._leader_duties_loop(), "leader-duties")
        log.info(
            "metadata replica n%d started (term %d, %d entries after snapshot %s)",
            self.node_id,
            hard_state.term,
            len(entries),
            snapshot.meta.index if snapshot is not None else "none",
        )

    def _make_transport(self) -> PeerLink:
        from catenary.server.peers import make_peer_link

        return make_peer_link(self)

    def on_peer_message(self, message: Message) -> None:
        if self.host is not None:
            self.host.step(message)

    # ------------------------------------------------- node records, addresses

    def _on_applied(self) -> None:
        now = time.monotonic()
        if now - self._nodes_refreshed_s >= 0.2:
            self._refresh_nodes()

    def _refresh_nodes(self, *, force: bool = False) -> None:
        """Re-read ``/catenary/nodes/*`` from the applied state; update peer addresses."""
        if self.host is None:
            return
        state = self.host.replica.state
        if not force and state.revision == self._nodes_revision:
            return
        self._nodes_revision = state.revision
        self._nodes_refreshed_s = time.monotonic()
        kvs, _more = state.list(sk.NODES_PREFIX, 0)
        nodes: dict[int, sk.NodeRecord] = {}
        for kv in kvs:
            record = sk.decode_node(kv.value)
            node = sk.node_of_key(kv.key)
            if record is None or node is None:
                log.error("unreadable node record at %s", kv.key)
                continue
            nodes[node] = record
        self._nodes = nodes
        if self.transport is not None:
            for node in sorted(nodes):
                if node != self.node_id and not nodes[node].removed:
                    self.transport.set_peer_address(node, nodes[node].peer_address)

    def node_record(self, node: int) -> sk.NodeRecord | None:
        return self._nodes.get(node)

    def _client_address_of(self, node: int) -> str:
        if node == self.node_id:
            return self.config.client_address
        record = self._nodes.get(node)
        if record is None:
            self._refresh_nodes(force=True)
            record = self._nodes.get(node)
        return record.client_address if record is not None else ""

    def _learn_nodes(self, infos: tuple[api.NodeInfo, ...]) -> None:
        """Addresses from a JoinReply, before our own log has them."""
        for info in infos:
            if info.node not in self._nodes:
                self._nodes[info.node] = sk.NodeRecord(
                    node=info.node,
                    generation=info.generation,
                    peer_address=info.peer_address,
                    client_address=info.client_address,
                    admin_address=info.admin_address,
                )
            if self.transport is not None and info.node != self.node_id:
                self.transport.set_peer_address(info.node, info.peer_address)

    # ------------------------------------------------------------- status

    def _provisioned(self) -> bool:
        if self.local is not None:
            return True
        if self.host is None:
            return False
        return self.host.replica.state.get(sk.CLUSTER_KEY) is not None

    def _members(self) -> tuple[api.RaftMember, ...]:
        if self.host is None:
            if self.local is not None:
                return (api.RaftMember(self.node_id or 1, "voter"),)
            return ()
        raft = self.host.replica.raft
        membership = raft.membership
        matches = _match_indexes(raft)
        members = [api.RaftMember(n, "voter", matches.get(n, 0)) for n in membership.voters]
        members += [api.RaftMember(n, "learner", matches.get(n, 0)) for n in membership.learners]
        return tuple(sorted(members, key=lambda m: m.node))

    def status(self) -> api.NodeStatus:
        config = self.config
        if self.local is not None:
            return api.NodeStatus(
                cluster_name=config.cluster_name,
                node=self.node_id,
                generation=self.generation,
                metadata_server="local",
                raft_state="none",
                term=0,
                leader=self.node_id,
                commit_index=self.local.applied_index,
                applied_index=self.local.applied_index,
                members=self._members(),
                provisioned=True,
            )
        if self.host is None:
            return api.NodeStatus(
                cluster_name=config.cluster_name,
                node=self.node_id,
                generation=self.generation,
                metadata_server=config.metadata.server,
                raft_state="none",
                term=0,
                leader=0,
                commit_index=0,
                applied_index=0,
                members=(),
                provisioned=False,
            )
        replica = self.host.replica
        raft = replica.raft
        role = raft.role
        if role == "follower" and self.node_id in raft.membership.learners:
            role = "learner"
        return api.NodeStatus(
            cluster_name=config.cluster_name,
            node=self.node_id,
            generation=self.generation,
            metadata_server="replicated",
            raft_state=role,
            term=raft.term,
            leader=raft.leader,
            commit_index=raft.commit_index,
            applied_index=replica.state.applied_index,
            members=self._members(),
            provisioned=self._provisioned(),
        )

    # ----------------------------------------------------------- requests

    def _require_host(self) -> MetadataHost:
        if self.host is not None:
            return self.host
        if self.phase == "joining":
            raise _error(ErrorCode.UNAVAILABLE, "this node is still joining the cluster")
        if self.phase == "starting":
            raise _error(ErrorCode.UNAVAILABLE, "the node is starting")
        if self.phase == "stopping":
            raise _error(ErrorCode.UNAVAILABLE, "the node is shutting down")
        raise _error(
            ErrorCode.UNAVAILABLE, "the cluster is not provisioned yet (run catenary provision)"
        )

    def _check_key(self, key: str, *, write: bool) -> None:
        limit = self.config.metadata.key_bytes_max
        size = len(key.encode())
        if size == 0:
            raise _error(ErrorCode.BAD_REQUEST, "the key must not be empty")
        if size > limit:
            raise _error(ErrorCode.TOO_LARGE, f"key of {size} bytes exceeds the limit of {limit}")
        if write and key.startswith(sk.SYSTEM_PREFIX):
            raise _error(
                ErrorCode.REFUSED, f"keys under {sk.SYSTEM_PREFIX} are written by the nodes only"
            )

    def _check_value(self, value: bytes) -> None:
        limit = self.config.metadata.value_bytes_max
        if len(value) > limit:
            raise _error(
                ErrorCode.TOO_LARGE, f"value of {len(value)} bytes exceeds the limit of {limit}"
            )

    def _list_limit(self, limit: int) -> int:
        bound = self.config.metadata.list_limit_max
        if limit < 0:
            raise _error(ErrorCode.BAD_REQUEST, "limit must be >= 0")
        return bound if limit == 0 else min(limit, bound)

    async def _write(self, command: md.Command) -> md.Result:
        if self.local is not None:
            result: md.Result = await self.local.write(command)
        else:
            result = await self._require_host().write(command)
        return _accepted(result)

    def begin_gets(self, requests: list[api.Get]) -> Begun | None:
        """The port's batched gets (client_port rule 7): linearizable gets that
        arrived together share one read on the replicated host.  A bad key is
        refused alone; the local store serves them one by one."""
        if self.local is not None:
            return None
        refused: list[api.Reply] = []
        keys: list[str] = []
        batched: list[api.Get] = []
        for request in requests:
            try:
                self._check_key(request.key, write=False)
            except ServiceError as exc:
                refused.append(exc.reply(request.id))
                continue
            keys.append(request.key)
            batched.append(request)
        if not batched:
            return Begun(refused, None, [], _no_replies)
        future = self._require_host().read_future(MultiGetQuery(tuple(keys)))
        return Begun(refused, future, batched, functools.partial(_get_replies, batched))

    def begin_puts(self, requests: list[api.Put]) -> Begun | None:
        """The port's batched puts (client_port rule 7): puts that arrived
        together are proposed together on the replicated host, each with its
        own outcome.  A bad key or value is refused alone; the local store
        serves them one by one."""
        if self.local is not None:
            return None
        refused: list[api.Reply] = []
        commands: list[md.Command] = []
        batched: list[api.Put] = []
        for request in requests:
            try:
                self._check_key(request.key, write=True)
                self._check_value(request.value)
            except ServiceError as exc:
                refused.append(exc.reply(request.id))
                continue
            precondition = public.precondition(request.precondition)
            commands.append(md.Put(request.key, request.value, precondition, request.lease))
            batched.append(request)
        if not batched:
            return Begun(refused, None, [], _no_replies)
        future = self._require_host().write_batch_future(commands)
        return Begun(refused, future, batched, functools.partial(_put_replies, batched))

    async def handle(self, request: api.Request) -> api.Reply:
        rid = request.id
        if isinstance(request, api.Get):
            self._check_key(request.key, write=False)
            answer = await self._read(GetQuery(request.key), stale=request.stale)
            return api.GetReply(rid, public.key_value(answer.kv), answer.revision, answer.behind)
        if isinstance(request, api.List):
            limit = self._list_limit(request.limit)
            answer = await self._read(ListQuery(request.prefix, limit), stale=request.stale)
            return api.ListReply(rid, public.key_values(answer.kvs), answer.revision, answer.more)
        if isinstance(request, api.Put):
            self._check_key(request.key, write=True)
            self._check_value(request.value)
            precondition = public.precondition(request.precondition)
            result = await self._write(
                md.Put(request.key, request.value, precondition, request.lease)
            )
            return api.WriteReply(rid, public.write_result(result))
        if isinstance(request, api.Delete):
            self._check_key(request.key, write=True)
            precondition = public.precondition(request.precondition)
            result = await self._write(md.Delete(request.key, precondition))
            return api.WriteReply(rid, public.write_result(result))
        if isinstance(request, api.GrantLease):
            result = await self._write(md.LeaseGrant(request.ttl_ms))
            return api.WriteReply(rid, public.write_result(result))
        if isinstance(request, api.KeepAlive):
            result = await self._write(md.LeaseKeepAlive(request.lease))
            return api.WriteReply(rid, public.write_result(result))
        if isinstance(request, api.RevokeLease):
            result = await self._write(md.LeaseRevoke(request.lease))
            return api.WriteReply(rid, public.write_result(result))
        if isinstance(request, api.GetStatus):
            return api.StatusReply(rid, self.status())
        if isinstance(request, api.ListNodes):
            return api.NodesReply(rid, self._node_infos())
        if isinstance(request, api.ListServers):
            return await self._list_servers(rid)
        if isinstance(request, api.Provision):
            return api.OkReply(rid, await self._provision_request(request))
        if isinstance(request, api.AddServer):
            return api.OkReply(rid, await self._add_server(request.node))
        if isinstance(request, api.RemoveServer):
            return api.OkReply(rid, await self._remove_server(request.node))
        if isinstance(request, api.Join):
            return await self._handle_join(request)
        raise _error(ErrorCode.BAD_REQUEST, f"request {type(request).__name__} not served here")

    async def _list_servers(self, rid: int) -> api.Reply:
        """The members with their match indexes: only the leader tracks those, so a
        follower asks the leader (bounded by the metadata request timeout) and
        answers its own view (match 0) when that fails."""
        status = self.status()
        host = self.host
        leader = status.leader
        if host is not None and leader and leader != self.node_id and not host.replica.is_leader:
            address = self._client_address_of(leader)
            if address:
                with contextlib.suppress(RpcError):
                    reply = await call(
                        address,
                        api.ListServers(rid),
                        cluster_name=self.config.cluster_name,
                        timeout_s=self.config.metadata.request_timeout_ms / 1000,
                    )
                    if isinstance(reply, api.ServersReply):
                        return api.ServersReply(rid, reply.members, reply.leader)
        return api.ServersReply(rid, status.members, status.leader)

    async def _read(self, query: GetQuery | ListQuery, *, stale: bool) -> Any:
        if self.local is not None:
            return await self.local.read(query)
        host = self._require_host()
        if stale:
            return host.read_stale(query)
        return await host.read(query)

    def _node_infos(self) -> tuple[api.NodeInfo, ...]:
        if self.local is not None:
            return (
                api.NodeInfo(
                    self.node_id,
                    self.generation,
                    self.config.peer_address,
                    self.config.client_address,
                    self.config.admin_address,
                ),
            )
        self._refresh_nodes()
        infos = []
        for node in sorted(self._nodes):
            record = self._nodes[node]
            state = "removed" if record.removed else "alive"
            if node == self.node_id and self.phase == "stopping":
                state = "failing-over"
            infos.append(
                api.NodeInfo(
                    node,
                    record.generation,
                    record.peer_address,
                    record.client_address,
                    record.admin_address,
                    state,
                )
            )
        return tuple(infos)

    async def watch(self, request: api.Watch, emit: Emit) -> None:
        if request.from_version < 0:
            raise _error(ErrorCode.BAD_REQUEST, "from_version must be >= 0")
        if not request.prefix:
            self._check_key(request.key, write=False)
        source: Any = self.local if self.local is not None else self._require_host()
        batch_max = self.config.metadata.watch_batch_max
        version = request.from_version or source.revision_now()
        # First reply: the watch is in place, caught up to ``version``.
        emit(api.WatchReply(request.id, public.watch_answer(md.WatchBatch((), version))))
        while True:
            changed = source.changed_future()  # taken before reading: no change slips by
            answer = source.changes_since(version, request.key, request.prefix, batch_max)
            if isinstance(answer, md.Compacted):
                emit(api.WatchReply(request.id, public.watch_answer(answer)))
                return
            if answer.events:
                emit(api.WatchReply(request.id, public.watch_answer(answer)))
            if answer.revision > version:
                version = answer.revision
            if answer.events and len(answer.events) >= batch_max:
                continue
            await asyncio.shield(changed)
            if self.phase in ("stopping", "stopped"):
                raise _error(ErrorCode.UNAVAILABLE, "the node is shutting down")

    # --------------------------------------------------------- provisioning

    async def _provision_request(self, request: api.Provision) -> str:
        if request.cluster_name and request.cluster_name != self.config.cluster_name:
            raise _error(
                ErrorCode.REFUSED,
                f"this node belongs to cluster {self.config.cluster_name!r}, "
                f"not {request.cluster_name!r}",
            )
        if self.local is not None:
            return "local metadata server: nothing to provision"
        if self.phase == "joining" or (not self.node_id and self.config.seeds):
            raise _error(ErrorCode.REFUSED, "this node joins an existing cluster through its seeds")
        if self._provisioned():
            return "already provisioned"
        await self._provision_self()
        return "provisioned"

    async def _provision_self(self) -> None:
        async with self._provision_lock:
            if not self.node_id:
                log.info("provisioning cluster %r as node 1", self.config.cluster_name)
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: self._marker_update(node_id=1, founder=True)
                )
            if self.host is None:
                await self._start_replica(founder=True)
                self.phase = "running"
                self._spawn(self._announce_loop(), "announce")
            deadline = time.monotonic() + self.config.metadata.request_timeout_ms / 1000
            while not self._provisioned():
                if time.monotonic() > deadline:
                    raise _error(ErrorCode.UNAVAILABLE, "provisioning did not complete in time")
                await self._complete_provisioning()
                if not self._provisioned():
                    await asyncio.sleep(self.config.raft.tick_ms / 1000)

    async def _complete_provisioning(self) -> None:
        """As founder and leader: create the system keys that are missing (idempotent)."""
        host = self.host
        if host is None or not host.replica.is_leader or not self.datadir:
            return
        if not self.datadir.marker.founder:
            return
        state = host.replica.state
        absent = md.Precondition("absent")
        try:
            if state.get(sk.NEXT_NODE_ID_KEY) is None:
                await host.write(md.Put(sk.NEXT_NODE_ID_KEY, b"2", absent))
            if state.get(sk.node_key(self.node_id)) is None:
                await host.write(md.Put(sk.node_key(self.node_id), self._own_record(), absent))
            if state.get(sk.CLUSTER_KEY) is None:
                record = sk.ClusterRecord(
                    cluster_name=self.config.cluster_name,
                    created_ms=int(time.time() * 1000),
                    founder=self.node_id,
                )
                result = await host.write(md.Put(sk.CLUSTER_KEY, sk.encode(record), absent))
                if isinstance(result, md.Written):
                    log.info("cluster %r provisioned", self.config.cluster_name)
        except ServiceError as exc:
            log.info("provisioning not complete yet: %s", exc.message)

    def _own_record(self) -> bytes:
        return sk.encode(
            sk.NodeRecord(
                node=self.node_id,
                generation=self.generation,
                name=self.config.node_name,
                peer_address=self.config.peer_address,
                client_address=self.config.client_address,
                admin_address=self.config.admin_address,
                roles=list(self.config.roles),
            )
        )

    # ----------------------------------------------------------------- join

    def _join_request(self) -> api.Join:
        return api.Join(
            0,
            self.config.cluster_name,
            self.node_id,
            self.config.peer_address,
            self.config.client_address,
            self.config.admin_address,
            self.generation,
        )

    async def _join_targets(self, first: list[str]) -> list[str]:
        targets = list(first)
        for address in self.config.seeds:
            if address not in targets:
                targets.append(address)
        return targets

    async def _send_join(self) -> api.JoinReply | None:
        """One round over the seeds (following leader hints); the reply or None."""
        config = self.config
        timeout_s = config.join.request_timeout_ms / 1000
        targets = await self._join_targets([])
        if self.host is not None:
            leader = self.host.replica.leader
            address = self._client_address_of(leader) if leader else ""
            if address:
                targets.insert(0, address)
            for node in sorted(self._nodes):
                if node != self.node_id and self._nodes[node].client_address not in targets:
                    targets.append(self._nodes[node].client_address)
            if not targets:
                targets.append(config.client_address)
        hops = 0
        while targets and hops < 16:
            target = targets.pop(0)
            hops += 1
            request = self._join_request()
            try:
                reply = await call(
                    target,
                    request,
                    cluster_name=config.cluster_name,
                    timeout_s=timeout_s,
                    frame_bytes_max=config.network.frame_bytes_max,
                )
            except RpcError as exc:
                if exc.refused is not None and exc.refused.code == "cluster":
                    self.fail(f"seed {target} refused this node: {exc.refused.reason}", exit_code=2)
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
                    self.fail(f"join refused by {target}: {reply.message}", exit_code=2)
                    return None
                log.info("join via %s: %s (%s)", target, reply.message, reply.code)
        return None

    async def _join_loop(self) -> None:
        config = self.config
        started = time.monotonic()
        while not self._stop_requested.is_set():
            reply = await self._send_join()
            if reply is not None:
                node = reply.node
                log.info("joined cluster %r as node %d", config.cluster_name, node)
                await asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(self._marker_update, node_id=node)
                )
                try:
                    await self._start_replica(founder=False)
                except StartupError as exc:
                    self.fail(str(exc))
                    return
                self._learn_nodes(reply.members)
                self.phase = "running"
                return
            if self._fatal:
                return
            if (
                config.join.timeout_ms
                and time.monotonic() - started > config.join.timeout_ms / 1000
            ):
                self.fail(f"could not join via {', '.join(config.seeds)} within the join timeout")
                return
            await asyncio.sleep(config.join.retry_interval_ms / 1000)

    async def _announce_loop(self) -> None:
        """After a (re)start: record this generation and addresses in the node record."""
        while not self._stop_requested.is_set():
            record = self._nodes.get(self.node_id)
            if (
                record is not None
                and record.generation == self.generation
                and record.peer_address == self.config.peer_address
                and record.client_address == self.config.client_address
                and record.admin_address == self.config.admin_address
            ):
                return
            if self._provisioned():
                reply = await self._send_join()
                if reply is not None:
                    log.info("announced generation %d", self.generation)
                    return
                if self._fatal:
                    return
            await asyncio.sleep(self.config.join.retry_interval_ms / 1000)
            self._refresh_nodes()

    async def _handle_join(self, request: api.Join) -> api.JoinReply:
        host = self._require_host()
        if request.cluster_name != self.config.cluster_name:
            raise _error(
                ErrorCode.REFUSED,
                f"cluster {request.cluster_name!r} is not this cluster "
                f"({self.config.cluster_name!r})",
            )
        for option, value in (
            ("peer_address", request.peer_address),
            ("client_address", request.client_address),
        ):
            try:
                parse_address(value)
            except ValueError as exc:
                raise _error(ErrorCode.BAD_REQUEST, f"{option} {value!r}: {exc}") from None
        if not host.replica.is_leader:
            leader = host.replica.leader
            raise ServiceError(
                ErrorCode.NOT_LEADER,
                "joins are handled by the metadata leader",
                leader=leader,
                leader_address=self._client_address_of(leader) if leader else "",
            )
        if not self._provisioned():
            raise _error(ErrorCode.UNAVAILABLE, "the cluster is not provisioned yet")
        async with self._join_lock:
            if request.node == 0:
                reused = self._unused_id_for(host, request)
                node = reused or await self._allocate_node_id(host)
            else:
                node = request.node
            record = await self._record_node(host, node, request)
            await self._ensure_member(host, node)
        self._refresh_nodes(force=True)
        if self.transport is not None and node != self.node_id:
            self.transport.set_peer_address(node, record.peer_address)
        return api.JoinReply(request.id, node, record.generation, self._node_infos())

    def _unused_id_for(self, host: MetadataHost, request: api.Join) -> int | None:
        """An id handed out to these very addresses that never held any data.

        A joiner whose ``JoinReply`` was lost asks again without an id; giving it
        the id it was already given (rather than a new one) leaves no orphan
        learner behind.  Only a registration that never received an entry
        qualifies: a node that held data and lost it must never come back under
        its old id.
        """
        self._refresh_nodes(force=True)
        raft = host.replica.raft
        membership = raft.membership
        matches = _match_indexes(raft)
        for node in sorted(self._nodes):
            record = self._nodes[node]
            if (
                record.removed
                or record.peer_address != request.peer_address
                or record.client_address != request.client_address
                or node in membership.voters
                or (node in membership.learners and matches.get(node, 0) > 0)
            ):
                continue
            log.info("join from %s again: it keeps n%d", request.peer_address, node)
            return node
        return None

    async def _allocate_node_id(self, host: MetadataHost) -> int:
        for _attempt in range(32):
            kv = host.replica.state.get(sk.NEXT_NODE_ID_KEY)
            if kv is None or not kv.value.isdigit():
                raise _error(ErrorCode.INTERNAL, f"{sk.NEXT_NODE_ID_KEY} is missing or unreadable")
            node = int(kv.value)
            result = await host.write(
                md.Put(
                    sk.NEXT_NODE_ID_KEY,
                    str(node + 1).encode(),
                    md.Precondition("version", kv.version),
                )
            )
            if isinstance(result, md.Written):
                return node
            await host.changed()
        raise _error(ErrorCode.UNAVAILABLE, "could not allocate a node id (contention)")

    async def _record_node(self, host: MetadataHost, node: int, request: api.Join) -> sk.NodeRecord:
        for _attempt in range(32):
            kv = host.replica.state.get(sk.node_key(node))
            old = sk.decode_node(kv.value) if kv is not None else None
            if kv is not None and old is None:
                raise _error(ErrorCode.INTERNAL, f"node record of n{node} is unreadable")
            if old is None and request.node != 0:
                raise _error(
                    ErrorCode.NOT_FOUND,
                    f"node n{node} is not registered in this cluster; "
                    "wipe its data directory and join again",
                )
            if old is not None and old.removed:
                raise _error(
                    ErrorCode.REFUSED,
                    f"node n{node} was removed from the cluster; wipe its data and join anew",
                )
            if old is not None and request.generation and request.generation < old.generation:
                raise _error(
                    ErrorCode.REFUSED,
                    f"n{node} generation {request.generation} is older than the recorded "
                    f"{old.generation}: a stale incarnation",
                )
            record = sk.NodeRecord(
                node=node,
                generation=max(request.generation, old.generation if old else 0) or 1,
                name=old.name if old else "",
                peer_address=request.peer_address,
                client_address=request.client_address,
                admin_address=request.admin_address,
                roles=old.roles if old else list(self.config.roles),
            )
            if old == record:
                return record
            precondition = (
                md.Precondition("version", kv.version)
                if kv is not None
                else md.Precondition("absent")
            )
            result = await host.write(md.Put(sk.node_key(node), sk.encode(record), precondition))
            if isinstance(result, md.Written):
                return record
            await host.changed()
        raise _error(ErrorCode.UNAVAILABLE, f"could not record node n{node} (contention)")

    async def _ensure_member(self, host: MetadataHost, node: int) -> None:
        deadline = time.monotonic() + self.config.metadata.request_timeout_ms / 1000
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
        deadline = time.monotonic() + self.config.metadata.request_timeout_ms / 1000
        while host.replica.state.applied_index < index:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _error(
                    ErrorCode.INDETERMINATE, f"entry {index} not applied in time; it may still be"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(host.changed(), remaining)

    async def _add_server(self, node: int) -> str:
        host = self._require_host()
        if not host.replica.is_leader:
            raise host._not_leader(host.replica.leader)
        self._refresh_nodes(force=True)
        record = self._nodes.get(node)
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

    async def _remove_server(self, node: int) -> str:
        host = self._require_host()
        if not host.replica.is_leader:
            raise host._not_leader(host.replica.leader)
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
        if node != self.node_id:
            await self._await_applied(host, index)
        return f"n{node} removed from the metadata group"

    # ------------------------------------------------------- leader duties

    async def _leader_duties_loop(self) -> None:
        """Promote caught-up learners; finish a founder's provisioning."""
        interval_s = max(0.05, 4 * self.config.raft.tick_ms / 1000)
        while True:
            await asyncio.sleep(interval_s)
            host = self.host
            if host is None or not host.replica.is_leader or self.phase == "stopping":
                continue
            if not self._provisioned():
                await self._complete_provisioning()
                continue
            await self._promote_learners(host)

    async def _promote_learners(self, host: MetadataHost) -> None:
        raft = host.replica.raft
        learners = raft.membership.learners
        if not learners:
            return
        matches = _match_indexes(raft)
        lag_max = self.config.raft.promote_lag_entries_max
        marks = self._promote_marks
        last_index = raft.last_index
        for node in learners:
            match = matches.get(node, 0)
            # Caught up: within the bound of the leader's log, or (under steady load,
            # where a fixed bound may never be met) past where the leader's log
            # ended at the previous check, one check interval ago.
            caught_up = match > 0 and (
                last_index - match <= lag_max or match >= marks.get(node, last_index + 1)
            )
            marks[node] = last_index
            if caught_up:
                try:
                    index = await host.conf_change(ConfChange(ConfChangeKind.PROMOTE, node))
                except ServiceError as exc:
                    log.debug("promotion of n%d deferred: %s", node, exc.message)
                    return
                log.info("promoting n%d to voter (match %d, entry %d)", node, match, index)
                return  # one change in flight at a time

    async def _transfer_leadership(self) -> None:
        host = self.host
        assert host is not None
        raft = host.replica.raft
        if not host.replica.is_leader:
            return
        others = [n for n in raft.membership.voters if n != self.node_id]
        if not others:
            return
        matches = _match_indexes(raft)
        target = max(others, key=lambda n: (matches.get(n, 0), -n))
        log.info("transferring leadership to n%d before stopping", target)
        try:
            await host.call(lambda replica: replica.transfer_leadership(target))
        except Exception as exc:
            log.warning("leadership transfer to n%d not started: %s", target, exc)
            return
        deadline = time.monotonic() + self.config.shutdown.transfer_timeout_ms / 1000
        while _leads(host) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(host.changed(), 0.05)
        if _leads(host):
            log.warning("leadership transfer to n%d did not complete; stopping anyway", target)
        else:
            log.info("leadership handed over (leader now n%s)", host.replica.leader or "?")


def log_store_recovery(what: str, report: RecoveryReport) -> None:
    """Report what opening a store repaired (a torn tail cut, files removed): never silently."""
    if report.torn_tail or report.checkpoints_rejected or report.removed_files:
        log.warning("%s recovered: %s", what, report.summary())
    else:
        log.info("%s opened: %s", what, report.summary())


def _ignore(_value: object) -> None:
    pass


def _leads(host: MetadataHost) -> bool:
    # A function, not the property inline: the answer changes across awaits.
    return host.replica.is_leader


def _match_indexes(raft: RaftNode) -> dict[int, int]:
    """Match index per member as the leader sees it (empty elsewhere)."""
    if raft.role != "leader":
        return {}
    status = raft.status()
    out = {node: peer.match for node, peer in status.peers.items()}
    out[raft.node_id] = status.last_index
    return out


# ------------------------------------------------------------------ process


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
