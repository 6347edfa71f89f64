"""The metadata service's two backends: ``ReplicatedMetadata`` (a Raft group) and
``LocalMetadata`` (one node, one local store).  Both implement
``services.MetadataService``; ``node.make_services`` picks one.

Replicated rules:

1. The replica starts once the node has a NodeId (at start on a restart,
   after provisioning or after joining); until then every request answers
   UNAVAILABLE with the node's phase as the reason.
2. Writes and linearizable reads go through the host task to the leader's
   core; on a follower they answer NOT_LEADER with the leader's client
   address.  Stale reads are answered from the applied state.
3. Stopping: a leader with other voters first hands leadership to the most
   caught-up one (bounded by ``shutdown.transfer_timeout_ms``); then the host
   finishes its Ready and fails what is left, and the transport closes.

Local rule: the store opens at start and serves everything on this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from random import Random
from typing import Any

from catenary.api import messages as api
from catenary.core.membership import match_indexes, transfer_target
from catenary.core.metadata import types as md
from catenary.core.metadata.replica import (
    GetQuery,
    ListQuery,
    MetadataReplica,
    MultiGetQuery,
)
from catenary.core.raft.types import Membership, Message
from catenary.persist.raft_storage import RaftStorage
from catenary.runtime.host import MetadataHost
from catenary.runtime.local_host import LocalMetadataHost
from catenary.runtime.metrics import ServerMetrics
from catenary.server import system_keys as sk
from catenary.server.context import NodeContext, StartupError
from catenary.server.peers import PeerLink, make_peer_link
from catenary.server.registry import NodeRegistry
from catenary.storage.fs import OsFileSystem
from catenary.storage.store import RecoveryReport

log = logging.getLogger("catenary.server")

# Test only (docs/faults.md): "follower-read" plants a bug in the read path
# so the fault suite can show it is caught.  Unset in any real deployment.
_TEST_PLANT = os.environ.get("CATENARY_TEST_PLANT", "")


def log_store_recovery(what: str, report: RecoveryReport) -> None:
    """Report what opening a store repaired (a torn tail cut, files removed): never silently."""
    if report.torn_tail or report.checkpoints_rejected or report.removed_files:
        log.warning("%s recovered: %s", what, report.summary())
    else:
        log.info("%s opened: %s", what, report.summary())


def _not_started_status(ctx: NodeContext) -> api.NodeStatus:
    return api.NodeStatus(
        cluster_name=ctx.config.cluster_name,
        node=ctx.node_id,
        generation=ctx.generation,
        metadata_server=ctx.config.metadata.server,
        raft_state="none",
        term=0,
        leader=0,
        commit_index=0,
        applied_index=0,
        members=(),
        provisioned=False,
    )


def _ignore(_value: object) -> None:
    pass


def _leads(host: MetadataHost) -> bool:
    # A function, not the property inline: the answer changes across awaits.
    return host.replica.is_leader


class ReplicatedMetadata:
    """The metadata service as a member of the cluster's Raft group."""

    def __init__(self, ctx: NodeContext, registry: NodeRegistry, metrics: ServerMetrics) -> None:
        self._ctx = ctx
        self._registry = registry
        self._metrics = metrics
        self.host: MetadataHost | None = None
        self.transport: PeerLink | None = None
        # Other services sharing the peer links register here (called when they are made).
        self.on_transport: list[Callable[[Any], None]] = []

    def is_leader(self) -> bool:
        return self.host is not None and self.host.replica.is_leader

    def leader(self) -> tuple[int, str]:
        """The leader this node knows and its client address ((0, "") when unknown)."""
        leader = self.host.replica.leader if self.host is not None else 0
        return leader, self._registry.client_address_of(leader) if leader else ""

    def require_host(self) -> MetadataHost:
        """Rule 1."""
        if self.host is not None:
            return self.host
        raise self._ctx.unavailable()

    async def start_replica(self, *, founder: bool) -> None:
        """Load the Raft state, start the host task and the transport (rule 1)."""
        ctx = self._ctx
        assert ctx.datadir is not None and ctx.node_id
        config = ctx.config
        directory = ctx.datadir.subdir("raft")

        def load() -> tuple[RaftStorage, Any]:
            storage = RaftStorage.open(OsFileSystem(), directory, config.storage.options())
            return storage, storage.load()

        try:
            (
                storage,
                (hard_state, snapshot, entries),
            ) = await asyncio.get_running_loop().run_in_executor(None, load)
        except Exception as exc:
            raise StartupError(f"raft storage in {directory}: {exc}") from exc
        log_store_recovery(f"raft log in {directory}", storage.store_recovery)
        for note in storage.recovery_notes:
            log.warning("raft storage recovery: %s", note)
        md_config = config.metadata
        replica = MetadataReplica(
            ctx.node_id,
            config.raft.options(),
            Random(int.from_bytes(os.urandom(8), "big")),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            # The founder's first membership is in no log entry: give it on every
            # start; entries and snapshots after it take precedence.
            initial_membership=Membership(voters=(ctx.node_id,)) if founder else None,
            config=md_config.replica_options(config.raft),
            state_config=md_config.state_options(),
        )
        transport = make_peer_link(
            config,
            ctx.node_id,
            ctx.generation,
            node_record=self._registry.get,
            on_message=self._step,
            on_link=self._metrics.peer_link,
        )
        self.transport = transport
        for attach in self.on_transport:
            attach(transport)
        self.host = host = MetadataHost(
            replica,
            storage,
            lambda message: _ignore(transport.send(message.dst, message)),
            md_config.host_options(config.raft),
            self._metrics,
            leader_address=self._registry.client_address_of,
            on_applied=self._registry.on_applied,
            on_failure=ctx.fail,
            disk_full_retry_ms=config.storage.disk_full_retry_ms,
        )
        self._registry.attach(lambda: host.replica.state, transport)
        self._registry.refresh(force=True)
        # Registry rule 4: a restart after every node stopped needs the peers' addresses
        # from this node's own log, before anything is applied.
        self._registry.learn_from_log(entries)
        try:
            await transport.start()
        except OSError as exc:
            raise StartupError(
                f"peer_address {config.peer_address}: cannot listen: {exc.strerror or exc}"
            ) from None
        if replica.raft.membership.voters == (ctx.node_id,):
            # The only voter: no one else could win, so skip the election timeout.
            replica.raft.campaign()
        host.start()
        log.info(
            "metadata replica n%d started (term %d, %d entries after snapshot %s)",
            ctx.node_id,
            hard_state.term,
            len(entries),
            snapshot.meta.index if snapshot is not None else "none",
        )

    def _step(self, message: Message) -> None:
        if self.host is not None:
            self.host.step(message)

    # ---------------------------------------------------------- service

    async def write(self, command: md.Command) -> md.Result:
        result: md.Result = await self.require_host().write(command)
        return result

    async def read(self, query: GetQuery | ListQuery, *, stale: bool) -> Any:
        host = self.require_host()
        if stale:
            return host.read_stale(query)
        return await host.read(query)

    def read_many_future(self, keys: Sequence[str]) -> asyncio.Future[Any] | None:
        host = self.require_host()
        if _TEST_PLANT == "follower-read" and not host.replica.is_leader:
            # TEST ONLY, off by default (docs/faults.md): a planted bug that lets a
            # follower answer linearizable gets from its own state, skipping
            # ReadIndex, so the fault suite can show its checker catches it.
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(host.read_stale(MultiGetQuery(tuple(keys))))
            return future
        return host.read_future(MultiGetQuery(tuple(keys)))

    def write_many_future(self, commands: list[md.Command]) -> asyncio.Future[Any] | None:
        return self.require_host().write_batch_future(commands)

    def watch_source(self) -> MetadataHost:
        return self.require_host()

    def provisioned(self) -> bool:
        if self.host is None:
            return False
        return self.host.replica.state.get(sk.CLUSTER_KEY) is not None

    def members(self) -> tuple[api.RaftMember, ...]:
        if self.host is None:
            return ()
        raft = self.host.replica.raft
        membership = raft.membership
        matches = match_indexes(raft)
        members = [api.RaftMember(n, "voter", matches.get(n, 0)) for n in membership.voters]
        members += [api.RaftMember(n, "learner", matches.get(n, 0)) for n in membership.learners]
        return tuple(sorted(members, key=lambda m: m.node))

    def disk_full(self) -> str:
        return self.host.disk_full if self.host is not None else ""

    def status(self) -> api.NodeStatus:
        ctx = self._ctx
        if self.host is None:
            return _not_started_status(ctx)
        replica = self.host.replica
        raft = replica.raft
        role = raft.role
        if role == "follower" and ctx.node_id in raft.membership.learners:
            role = "learner"
        return api.NodeStatus(
            cluster_name=ctx.config.cluster_name,
            node=ctx.node_id,
            generation=ctx.generation,
            metadata_server="replicated",
            raft_state=role,
            term=raft.term,
            leader=raft.leader,
            commit_index=raft.commit_index,
            applied_index=replica.state.applied_index,
            members=self.members(),
            provisioned=self.provisioned(),
            disk_full=self.host.disk_full,
        )

    # ------------------------------------------------------- lifecycle

    async def prepare_stop(self) -> None:
        """Rule 3: hand leadership over before the client port drains."""
        host = self.host
        if host is None or not host.running or host.failure is not None:
            return
        if not host.replica.is_leader:
            return
        raft = host.replica.raft
        target = transfer_target(raft.membership.voters, self._ctx.node_id, match_indexes(raft))
        if target is None:
            return
        log.info("transferring leadership to n%d before stopping", target)
        try:
            await host.call(lambda replica: replica.transfer_leadership(target))
        except Exception as exc:
            log.warning("leadership transfer to n%d not started: %s", target, exc)
            return
        deadline = time.monotonic() + self._ctx.config.shutdown.transfer_timeout_ms / 1000
        while _leads(host) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(host.changed(), 0.05)
        if _leads(host):
            log.warning("leadership transfer to n%d did not complete; stopping anyway", target)
        else:
            log.info("leadership handed over (leader now n%s)", host.replica.leader or "?")

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
        if self.transport is not None:
            await self.transport.close()


class LocalMetadata:
    """The metadata service of a node that keeps it alone, in one local store."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self.store: LocalMetadataHost | None = None

    async def open(self) -> None:
        ctx = self._ctx
        assert ctx.datadir is not None
        config = ctx.config
        store = LocalMetadataHost(
            ctx.datadir.subdir("metadata-local"),
            config.metadata.local_host_options(config.raft, config.storage),
            on_failure=ctx.fail,
        )
        try:
            await store.start()
        except Exception as exc:
            raise StartupError(f"local metadata store: {exc}") from exc
        # Only now: the node serves (and reports itself provisioned) once the store is open.
        self.store = store

    def _require(self) -> LocalMetadataHost:
        if self.store is not None:
            return self.store
        raise self._ctx.unavailable()

    async def write(self, command: md.Command) -> md.Result:
        result: md.Result = await self._require().write(command)
        return result

    async def read(self, query: GetQuery | ListQuery, *, stale: bool) -> Any:
        return await self._require().read(query)

    def read_many_future(self, keys: Sequence[str]) -> asyncio.Future[Any] | None:
        return None  # the local store serves gets one by one

    def write_many_future(self, commands: list[md.Command]) -> asyncio.Future[Any] | None:
        return None  # the local store serves puts one by one

    def watch_source(self) -> LocalMetadataHost:
        return self._require()

    def provisioned(self) -> bool:
        return self.store is not None

    def disk_full(self) -> str:
        return ""  # the local store answers a failed write UNAVAILABLE itself

    def status(self) -> api.NodeStatus:
        ctx = self._ctx
        if self.store is None:
            return _not_started_status(ctx)
        return api.NodeStatus(
            cluster_name=ctx.config.cluster_name,
            node=ctx.node_id,
            generation=ctx.generation,
            metadata_server="local",
            raft_state="none",
            term=0,
            leader=ctx.node_id,
            commit_index=self.store.applied_index,
            applied_index=self.store.applied_index,
            members=(api.RaftMember(ctx.node_id or 1, "voter"),),
            provisioned=True,
        )

    async def prepare_stop(self) -> None:
        pass

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.stop()
