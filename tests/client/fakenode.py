"""A tiny in-process node speaking the client protocol, for client unit tests.

It does the real wire handshake and frames (``catenary.wire``) and keeps an
in-memory versioned store with the metadata semantics (one global revision;
a key's version is the revision of its last change).  A test steers it with
``hook``: called with each request, it returns a reply to send instead, the
string "drop" (close the connection without answering), "apply_drop" (serve
it, then close without answering), "ignore" (never answer), or None (serve
normally).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from catenary.api import messages as m
from catenary.api.types import (
    Compacted,
    Done,
    Event,
    KeyValue,
    LeaseGranted,
    LeaseNotFound,
    PreconditionFailed,
    WatchBatch,
    WriteResult,
    Written,
)
from catenary.wire import (
    FrameDecoder,
    FrameKind,
    HelloAck,
    Role,
    WireError,
    check_hello,
    decode_hello,
    decode_payload,
    encode_hello_reply,
    encode_message,
    encode_pong,
)

Hook = Callable[[m.Request], "m.Reply | str | None"]
_encoder = m.request_encoder


class FakeNode:
    def __init__(self, cluster_name: str = "test", node_id: int = 1) -> None:
        self.cluster_name = cluster_name
        self.node_id = node_id
        self.hook: Hook | None = None
        self.accept_any_cluster = True  # a client hello with "" learns the name
        self.hello_delay_s = 0.0  # a slow node: the handshake answer comes this late
        self.protocol_version = 1  # 3: answers and may receive PING (catenary.wire.liveness)
        self.silent = False  # a stalled node: reads everything, answers nothing
        self.pings = 0
        self.received: list[m.Request] = []
        self.kv: dict[str, KeyValue] = {}
        self.revision = 0
        self.disk_full = ""  # reported in status
        self.history: list[Event] = []
        self.history_oldest = 1
        self.leases: dict[int, int] = {}
        self.next_lease = 1
        self.watchers: dict[tuple[int, int], tuple[asyncio.StreamWriter, m.Watch]] = {}
        self.address = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._conn_ids = 0
        self.connections_accepted = 0

    async def start(self, port: int = 0) -> FakeNode:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        sock = self._server.sockets[0]
        self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    def drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()

    # ---------------------------------------------------------------- serve

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections_accepted += 1
        self._conn_ids += 1
        conn_id = self._conn_ids
        decoder = FrameDecoder()
        shook = False
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                try:
                    frames = decoder.feed(data)
                except WireError:
                    return
                for frame in frames:
                    if not shook:
                        hello = decode_hello(frame)
                        name = self.cluster_name
                        if self.accept_any_cluster and hello.cluster_name == "":
                            name = ""
                        refusal = check_hello(
                            hello, cluster_name=name, roles=frozenset({Role.CLIENT})
                        )
                        if refusal is not None:
                            writer.write(encode_hello_reply(refusal))
                            await writer.drain()
                            return
                        if self.hello_delay_s:
                            await asyncio.sleep(self.hello_delay_s)
                        writer.write(
                            encode_hello_reply(
                                HelloAck(self.protocol_version, self.cluster_name, self.node_id, 1)
                            )
                        )
                        shook = True
                        continue
                    if self.silent:
                        continue
                    if frame.kind == FrameKind.PING:
                        self.pings += 1
                        writer.write(encode_pong(frame.payload))
                        continue
                    request = decode_payload(frame, m.request_decoder)
                    self.received.append(request)
                    action = self.hook(request) if self.hook is not None else None
                    if action == "drop":
                        return
                    if action == "apply_drop":  # applied, but the reply is lost
                        self._handle(conn_id, writer, request)
                        return
                    if action == "ignore":
                        continue
                    if isinstance(action, str):
                        raise AssertionError(action)
                    reply = action if action is not None else self._handle(conn_id, writer, request)
                    if reply is not None:
                        self._send(writer, reply)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            for key in [k for k in self.watchers if k[0] == conn_id]:
                del self.watchers[key]
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, reply: m.Reply) -> None:
        if not writer.is_closing():
            writer.write(encode_message(FrameKind.REPLY, reply, _encoder))

    # ------------------------------------------------------------ semantics

    def _handle(
        self, conn_id: int, writer: asyncio.StreamWriter, request: m.Request
    ) -> m.Reply | None:
        match request:
            case m.Get(id=i, key=key):
                return m.GetReply(i, self.kv.get(key), self.revision)
            case m.List(id=i, prefix=prefix, limit=limit):
                kvs = [self.kv[k] for k in sorted(self.kv) if k.startswith(prefix)]
                more = bool(limit) and len(kvs) > limit
                return m.ListReply(i, tuple(kvs[:limit] if limit else kvs), self.revision, more)
            case m.Put(id=i, key=key, value=value, precondition=pre, lease=lease):
                failed = self._check(key, pre.kind, pre.version)
                if failed is not None:
                    return m.WriteReply(i, failed)
                if lease and lease not in self.leases:
                    return m.WriteReply(i, LeaseNotFound(lease))
                self.revision += 1
                self.kv[key] = KeyValue(key, value, self.revision, lease)
                self._event(Event("put", key, value, self.revision))
                return m.WriteReply(i, Written(self.revision))
            case m.Delete(id=i, key=key, precondition=pre):
                failed = self._check(key, pre.kind, pre.version)
                if failed is not None:
                    return m.WriteReply(i, failed)
                if key not in self.kv:
                    return m.WriteReply(i, Written(self.revision, absent=True))
                self.revision += 1
                del self.kv[key]
                self._event(Event("delete", key, b"", self.revision))
                return m.WriteReply(i, Written(self.revision))
            case m.GrantLease(id=i, ttl_ms=ttl_ms):
                lease = self.next_lease
                self.next_lease += 1
                self.leases[lease] = ttl_ms
                return m.WriteReply(i, LeaseGranted(lease, ttl_ms))
            case m.KeepAlive(id=i, lease=lease) | m.RevokeLease(id=i, lease=lease):
                if lease not in self.leases:
                    return m.WriteReply(i, LeaseNotFound(lease))
                if isinstance(request, m.RevokeLease):
                    del self.leases[lease]
                return m.WriteReply(i, Done())
            case m.Watch(id=i, from_version=from_version):
                if from_version and from_version + 1 < self.history_oldest:
                    return m.WatchReply(i, Compacted(self.history_oldest, self.revision))
                self.watchers[(conn_id, i)] = (writer, request)
                events = tuple(
                    e for e in self.history if e.version > from_version and _matches(request, e)
                )
                return m.WatchReply(i, WatchBatch(events if from_version else (), self.revision))
            case m.CancelWatch(id=i):
                self.watchers.pop((conn_id, i), None)
                return None
            case m.GetStatus(id=i):
                return m.StatusReply(
                    i,
                    m.NodeStatus(
                        cluster_name=self.cluster_name,
                        node=self.node_id,
                        generation=1,
                        metadata_server="replicated",
                        raft_state="leader",
                        term=1,
                        leader=self.node_id,
                        commit_index=self.revision,
                        applied_index=self.revision,
                        members=(m.RaftMember(self.node_id, "voter"),),
                        provisioned=True,
                        disk_full=self.disk_full,
                    ),
                )
            case m.ListNodes(id=i):
                info = m.NodeInfo(self.node_id, 1, "127.0.0.1:1", self.address, "127.0.0.1:2")
                return m.NodesReply(i, (info,))
            case m.ListServers(id=i):
                return m.ServersReply(i, (m.RaftMember(self.node_id, "voter"),), self.node_id)
            case m.Provision(id=i) | m.AddServer(id=i) | m.RemoveServer(id=i):
                return m.OkReply(i, "done")
            case _:
                return m.ErrorReply(request.id, m.ErrorCode.BAD_REQUEST, "unsupported")

    def _check(self, key: str, kind: str, version: int) -> WriteResult | None:
        current = self.kv[key].version if key in self.kv else 0
        if kind == "absent" and current != 0:
            return PreconditionFailed(key, current)
        if kind == "version" and current != version:
            return PreconditionFailed(key, current)
        return None

    def _event(self, event: Event) -> None:
        self.history.append(event)
        for (_conn, watch_id), (writer, watch) in sorted(
            self.watchers.items(), key=lambda item: item[0]
        ):
            if _matches(watch, event):
                self._send(writer, m.WatchReply(watch_id, WatchBatch((event,), self.revision)))


def _matches(watch: m.Watch, event: Event) -> bool:
    return event.key.startswith(watch.key) if watch.prefix else event.key == watch.key


def not_leader(request: m.Request, leader_address: str) -> m.ErrorReply:
    return m.ErrorReply(
        request.id,
        m.ErrorCode.NOT_LEADER,
        "not the leader",
        leader=2,
        leader_address=leader_address,
    )
