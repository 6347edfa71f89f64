"""Requests a client sends to any node, and the replies.

Transport: the wire layer's length-prefixed frames after a handshake whose
role is "client".  Every request carries a connection-local ``id``; every
reply to it carries the same ``id``, so one connection multiplexes many
requests (replies may arrive out of order).  A watch answers with a stream of
``WatchReply`` frames under the request's id until ``CancelWatch`` or the
connection closes.

Errors are ``ErrorReply`` with a ``code`` from ``ErrorCode`` (both in
``catenary.api.errors``, re-exported here).  The keys, values, preconditions,
results and events inside these messages are the public types of
``catenary.api.types``, never the core's structs.  The one a
client must treat with care is ``INDETERMINATE``: the write may or may not
have been applied (its leader was lost mid-flight); it is never reported as
a plain failure.
"""

from __future__ import annotations

import msgspec

from catenary.api.errors import ErrorCode as ErrorCode
from catenary.api.errors import ErrorReply as ErrorReply
from catenary.api.types import (
    Compacted,
    KeyValue,
    Precondition,
    WatchBatch,
    WriteResult,
)

# ---------------------------------------------------------------- requests


class Get(msgspec.Struct, tag="get", array_like=True, frozen=True):
    id: int
    key: str
    stale: bool = False  # True: any member may answer from its applied state


class List(msgspec.Struct, tag="list", array_like=True, frozen=True):
    id: int
    prefix: str
    stale: bool = False
    limit: int = 0  # 0 = no limit (the server still bounds the reply size)


class Put(msgspec.Struct, tag="put", array_like=True, frozen=True):
    id: int
    key: str
    value: bytes
    precondition: Precondition = Precondition()
    lease: int = 0


class Delete(msgspec.Struct, tag="delete", array_like=True, frozen=True):
    id: int
    key: str
    precondition: Precondition = Precondition()


class Watch(msgspec.Struct, tag="watch", array_like=True, frozen=True):
    id: int
    key: str
    prefix: bool = False  # True: watch every key starting with ``key``
    from_version: int = 0  # deliver changes with version > from_version; 0 = from now


class CancelWatch(msgspec.Struct, tag="unwatch", array_like=True, frozen=True):
    id: int  # the id of the Watch request


class GrantLease(msgspec.Struct, tag="lgrant", array_like=True, frozen=True):
    id: int
    ttl_ms: int


class KeepAlive(msgspec.Struct, tag="lkeep", array_like=True, frozen=True):
    id: int
    lease: int


class RevokeLease(msgspec.Struct, tag="lrevoke", array_like=True, frozen=True):
    id: int
    lease: int


class GetStatus(msgspec.Struct, tag="status", array_like=True, frozen=True):
    id: int


class ListNodes(msgspec.Struct, tag="nodes", array_like=True, frozen=True):
    id: int


class Provision(msgspec.Struct, tag="provision", array_like=True, frozen=True):
    id: int
    cluster_name: str = ""


class ListServers(msgspec.Struct, tag="msrv", array_like=True, frozen=True):
    """Members of the metadata Raft group."""

    id: int


class AddServer(msgspec.Struct, tag="madd", array_like=True, frozen=True):
    id: int
    node: int  # added as learner, promoted to voter once caught up


class RemoveServer(msgspec.Struct, tag="mremove", array_like=True, frozen=True):
    id: int
    node: int


class Join(msgspec.Struct, tag="join", array_like=True, frozen=True):
    """Sent by a new node to a seed: register me, give me a NodeId (or confirm mine)."""

    id: int
    cluster_name: str
    node: int  # 0 for a node that has none yet
    peer_address: str
    client_address: str
    admin_address: str
    # The joiner's generation, bumped and persisted on each of its starts (0 = not
    # given); the node record keeps the newest one and refuses an older one.
    generation: int = 0


# ------------------------------------------------------------------ logs


class LogAppend(msgspec.Struct, tag="lappend", array_like=True, frozen=True):
    """Append ``payloads`` to ``log`` as one batch; answered with the batch's LSNs."""

    id: int
    log: int
    payloads: tuple[bytes, ...]
    timeout_ms: int = 0  # the caller's time left; the node answers within it (0: its own bound)


class LogRead(msgspec.Struct, tag="lread", array_like=True, frozen=True):
    """Records of ``log`` from ``from_lsn`` (up to ``to_lsn``, exclusive; 0 = open-ended).

    Answered with at most ``records_max`` items as soon as at least one is
    ready; with none after ``wait_ms`` when the reader is at the tail.
    """

    id: int
    log: int
    from_lsn: int
    to_lsn: int = 0
    records_max: int = 1000
    wait_ms: int = 0


class LogFindTail(msgspec.Struct, tag="ltail", array_like=True, frozen=True):
    id: int
    log: int


class LogTrim(msgspec.Struct, tag="ltrim", array_like=True, frozen=True):
    """Trim ``log`` through ``lsn`` (records at or below it are discarded)."""

    id: int
    log: int
    lsn: int


class LogSeal(msgspec.Struct, tag="lseal", array_like=True, frozen=True):
    id: int
    log: int


class LogReconfigure(msgspec.Struct, tag="lreconf", array_like=True, frozen=True):
    """Seal ``log``'s tail segment and start a new one (defaults: the cluster's)."""

    id: int
    log: int
    provider: str = ""  # "" = the cluster's default provider
    replication: str = ""  # e.g. "{node: 2}"; "" = the cluster's default
    sequencer: int = 0  # the node to sequence the new segment; 0 = the node asked


class LogDescribe(msgspec.Struct, tag="ldesc", array_like=True, frozen=True):
    id: int
    log: int = -1  # -1 = every log


Request = (
    Get
    | List
    | Put
    | Delete
    | Watch
    | CancelWatch
    | GrantLease
    | KeepAlive
    | RevokeLease
    | GetStatus
    | ListNodes
    | Provision
    | ListServers
    | AddServer
    | RemoveServer
    | Join
    | LogAppend
    | LogRead
    | LogFindTail
    | LogTrim
    | LogSeal
    | LogReconfigure
    | LogDescribe
)


# ----------------------------------------------------------------- replies


class GetReply(msgspec.Struct, tag="getr", array_like=True, frozen=True):
    id: int
    kv: KeyValue | None
    revision: int  # applied revision of the answering member
    behind: int = 0  # for stale reads: entries the member knows it has not applied yet


class ListReply(msgspec.Struct, tag="listr", array_like=True, frozen=True):
    id: int
    kvs: tuple[KeyValue, ...]
    revision: int
    more: bool = False  # truncated by limit


class WriteReply(msgspec.Struct, tag="writer", array_like=True, frozen=True):
    id: int
    result: WriteResult


class WatchReply(msgspec.Struct, tag="watchr", array_like=True, frozen=True):
    id: int
    batch: WatchBatch | Compacted


class NodeInfo(msgspec.Struct, array_like=True, frozen=True):
    node: int
    generation: int
    peer_address: str
    client_address: str
    admin_address: str
    state: str = "alive"  # alive | suspect | dead | failing-over


class RaftMember(msgspec.Struct, array_like=True, frozen=True):
    node: int
    role: str  # voter | learner
    match_index: int = 0  # as seen by the leader (0 elsewhere)


class NodeStatus(msgspec.Struct, array_like=True, frozen=True):
    cluster_name: str
    node: int
    generation: int
    metadata_server: str  # "replicated" | "local"
    raft_state: str  # leader | follower | candidate | pre-candidate | learner | none
    term: int
    leader: int
    commit_index: int
    applied_index: int
    members: tuple[RaftMember, ...]
    provisioned: bool
    disk_full: str = ""  # why writes wait for disk space; "" when they do not


class StatusReply(msgspec.Struct, tag="statusr", array_like=True, frozen=True):
    id: int
    status: NodeStatus


class NodesReply(msgspec.Struct, tag="nodesr", array_like=True, frozen=True):
    id: int
    nodes: tuple[NodeInfo, ...]


class ServersReply(msgspec.Struct, tag="msrvr", array_like=True, frozen=True):
    id: int
    members: tuple[RaftMember, ...]
    leader: int


class JoinReply(msgspec.Struct, tag="joinr", array_like=True, frozen=True):
    id: int
    node: int
    generation: int
    members: tuple[NodeInfo, ...]


class OkReply(msgspec.Struct, tag="okr", array_like=True, frozen=True):
    id: int
    detail: str = ""


class LogAppendReply(msgspec.Struct, tag="lappendr", array_like=True, frozen=True):
    id: int
    first_lsn: int
    last_lsn: int


class LogRecord(msgspec.Struct, tag="rec", array_like=True, frozen=True):
    lsn: int
    payload: bytes


class LogGap(msgspec.Struct, tag="gap", array_like=True, frozen=True):
    """LSNs ``[from_lsn, to_lsn)`` hold no record: ``kind`` "trim" (trimmed away) or
    "data_loss" (no log-server of the segment holds them)."""

    from_lsn: int
    to_lsn: int
    kind: str


class LogReadReply(msgspec.Struct, tag="lreadr", array_like=True, frozen=True):
    id: int
    items: tuple[LogRecord | LogGap, ...]
    next_lsn: int  # where the next read continues
    done: bool = False  # a bounded read reached ``to_lsn``


class LogTailReply(msgspec.Struct, tag="ltailr", array_like=True, frozen=True):
    id: int
    tail: int  # the first LSN not yet committed: the next append's first LSN, or later
    sealed: bool = False
    trim_point: int = 0


class LogTrimReply(msgspec.Struct, tag="ltrimr", array_like=True, frozen=True):
    id: int
    trim_point: int  # the effective trim point (clipped to the committed tail)
    segments_dropped: int


class SegmentInfo(msgspec.Struct, array_like=True, frozen=True):
    index: int
    base_lsn: int
    end_lsn: int  # first LSN after it; 0 for the open tail segment
    provider: str
    replication: str
    sequencer: str  # "N<node>:<generation>"
    nodeset: tuple[int, ...]


class LogInfo(msgspec.Struct, array_like=True, frozen=True):
    log: int
    version: int  # of the chain in the metadata service
    trim_point: int
    tail: int  # first LSN not yet committed (0: unknown, the sequencer did not answer)
    sealed: bool
    segments: tuple[SegmentInfo, ...]


class LogDescribeReply(msgspec.Struct, tag="ldescr", array_like=True, frozen=True):
    id: int
    logs: tuple[LogInfo, ...]


Reply = (
    GetReply
    | ListReply
    | WriteReply
    | WatchReply
    | StatusReply
    | NodesReply
    | ServersReply
    | JoinReply
    | OkReply
    | LogAppendReply
    | LogReadReply
    | LogTailReply
    | LogTrimReply
    | LogDescribeReply
    | ErrorReply
)


def status_to_json(status: NodeStatus) -> dict[str, object]:
    """``NodeStatus`` with named fields (its wire form is an array), for JSON outputs."""
    return {
        "cluster_name": status.cluster_name,
        "node": status.node,
        "generation": status.generation,
        "metadata_server": status.metadata_server,
        "raft_state": status.raft_state,
        "term": status.term,
        "leader": status.leader,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "members": [
            {"node": member.node, "role": member.role, "match_index": member.match_index}
            for member in status.members
        ],
        "provisioned": status.provisioned,
        "disk_full": status.disk_full,
    }


request_encoder = msgspec.msgpack.Encoder()
request_decoder: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)
reply_decoder: msgspec.msgpack.Decoder[Reply] = msgspec.msgpack.Decoder(Reply)
