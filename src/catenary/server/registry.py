"""The node registry: every node's record (``/catenary/nodes/<id>``) as this node applied it.

Rules:

1. The records are read from the applied metadata state, at most every 0.2 s
   on apply and at once when a decision needs them (``refresh(force=True)``).
2. Each record's peer address is handed to the peer transport, so a node that
   moved (a restart on a new address) is dialed where it now is; a removed
   node is no longer dialed by its record.
3. Before this node's own log holds them, the addresses a ``JoinReply``
   carried are used (``learn``).
4. At a restart, the node records in the node's own Raft log — entries not
   applied yet, committed or not — give the peers' addresses too
   (``learn_from_log``): after every node restarted, no leader can be elected
   (nothing gets applied) until the nodes can reach each other, so waiting for
   applied records would wait forever.  An address is only where to dial; the
   peer's hello says who answers, and the applied records replace these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from catenary.api import messages as api
from catenary.core.membership import Registration
from catenary.core.metadata.state import MetadataStateMachine
from catenary.core.metadata.types import Put, decode_request
from catenary.core.raft.types import Entry, EntryKind
from catenary.server import system_keys as sk
from catenary.server.context import NodeContext

log = logging.getLogger("catenary.server")

REFRESH_INTERVAL_S = 0.2


def registration(record: sk.NodeRecord, node: int | None = None) -> Registration:
    """A node record (kept under ``node``'s key) as the membership rules see it."""
    return Registration(
        record.node if node is None else node,
        record.peer_address,
        record.client_address,
        record.generation,
        record.removed,
    )


class PeerAddresses(Protocol):
    def set_peer_address(self, peer_id: int, address: str | None) -> None: ...


class NodeRegistry:
    """The cluster's nodes as recorded in the metadata this node applied."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._nodes: dict[int, sk.NodeRecord] = {}
        self._revision = -1
        self._refreshed_s = 0.0
        self._state: Callable[[], MetadataStateMachine] | None = None
        self._peers: PeerAddresses | None = None

    def attach(self, state: Callable[[], MetadataStateMachine], peers: PeerAddresses) -> None:
        """Read records from ``state()``; hand peer addresses to ``peers`` (rule 2)."""
        self._state = state
        self._peers = peers

    def on_applied(self) -> None:
        if time.monotonic() - self._refreshed_s >= REFRESH_INTERVAL_S:
            self.refresh()

    def refresh(self, *, force: bool = False) -> None:
        """Re-read ``/catenary/nodes/*`` from the applied state; update peer addresses."""
        if self._state is None:
            return
        state = self._state()
        if not force and state.revision == self._revision:
            return
        self._revision = state.revision
        self._refreshed_s = time.monotonic()
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
        for node in sorted(nodes):
            if node != self._ctx.node_id and not nodes[node].removed:
                self.set_peer_address(node, nodes[node].peer_address)

    def set_peer_address(self, node: int, address: str) -> None:
        if self._peers is not None and node != self._ctx.node_id:
            self._peers.set_peer_address(node, address)

    def get(self, node: int) -> sk.NodeRecord | None:
        return self._nodes.get(node)

    def nodes(self) -> list[int]:
        return sorted(self._nodes)

    def registrations(self) -> list[Registration]:
        """The records as the membership rules see them."""
        return [registration(self._nodes[node], node) for node in sorted(self._nodes)]

    def client_address_of(self, node: int) -> str:
        if node == self._ctx.node_id:
            return self._ctx.config.client_address
        record = self._nodes.get(node)
        if record is None:
            self.refresh(force=True)
            record = self._nodes.get(node)
        return record.client_address if record is not None else ""

    def learn(self, infos: tuple[api.NodeInfo, ...]) -> None:
        """Rule 3: addresses from a JoinReply, before our own log has them."""
        for info in infos:
            if info.node not in self._nodes:
                self._nodes[info.node] = sk.NodeRecord(
                    node=info.node,
                    generation=info.generation,
                    peer_address=info.peer_address,
                    client_address=info.client_address,
                    admin_address=info.admin_address,
                )
            self.set_peer_address(info.node, info.peer_address)

    def learn_from_log(self, entries: Sequence[Entry]) -> int:
        """Rule 4: peer addresses from node-record writes in ``entries``; how many."""
        found: dict[int, sk.NodeRecord] = {}
        for entry in entries:
            if entry.kind != EntryKind.NORMAL:
                continue
            try:
                command = decode_request(entry.data).command
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if not isinstance(command, Put):
                continue
            node = sk.node_of_key(command.key)
            record = sk.decode_node(command.value) if node is not None else None
            if node is not None and record is not None:
                found[node] = record  # the latest write wins
        for node in sorted(found):
            record = found[node]
            if node not in self._nodes or self._nodes[node].generation <= record.generation:
                self._nodes[node] = record
            if not record.removed:
                self.set_peer_address(node, record.peer_address)
        return len(found)

    def infos(self) -> tuple[api.NodeInfo, ...]:
        self.refresh()
        infos = []
        for node in sorted(self._nodes):
            record = self._nodes[node]
            state = "removed" if record.removed else "alive"
            if node == self._ctx.node_id and self._ctx.phase == "stopping":
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
