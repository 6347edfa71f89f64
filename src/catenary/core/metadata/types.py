"""Commands, queries and results of the metadata state machine.

Commands go through the Raft log (encoded with ``encode_command``) and are
applied in the same order on every member.  Queries (get, list, watch) are
answered from a member's applied state after a ReadIndex (or, for stale
reads, at once).

Versions: the store keeps one global revision that grows by one for every
applied write (put, delete, lease expiry deleting keys counts once per key).
A key's ``version`` is the revision of its last modification, so versions
only grow, also across delete and re-create.  ``Precondition`` compares
against that version; version 0 means "absent".
"""

from __future__ import annotations

import msgspec


class Precondition(msgspec.Struct, array_like=True, frozen=True):
    kind: str = "none"  # "none" | "absent" | "version"
    version: int = 0  # for kind == "version"


class Put(msgspec.Struct, tag="put", array_like=True, frozen=True):
    key: str
    value: bytes
    precondition: Precondition = Precondition()
    lease: int = 0  # 0 = not attached to a lease


class Delete(msgspec.Struct, tag="del", array_like=True, frozen=True):
    key: str
    precondition: Precondition = Precondition()


class LeaseGrant(msgspec.Struct, tag="lg", array_like=True, frozen=True):
    ttl_ms: int


class LeaseKeepAlive(msgspec.Struct, tag="lk", array_like=True, frozen=True):
    lease: int


class LeaseRevoke(msgspec.Struct, tag="lr", array_like=True, frozen=True):
    lease: int


class LeaseCheckpoint(msgspec.Struct, tag="lc", array_like=True, frozen=True):
    """Leader-proposed: remaining ms of each live lease, so a new leader resumes them.

    ``applied_index`` is the proposer's applied index when it measured: a lease
    refreshed by a later entry (a keep-alive that was in flight) keeps its
    fresh TTL instead of the older remaining time measured before it.  (0 marks
    a checkpoint of the earlier format, applied to every listed lease.)
    """

    remaining_ms: tuple[tuple[int, int], ...]  # (lease, remaining_ms), sorted by lease
    applied_index: int = 0


class LeaseExpire(msgspec.Struct, tag="lx", array_like=True, frozen=True):
    """Leader-proposed: these leases ran out; delete them and their keys.

    ``applied_index`` is the proposer's applied index when it decided: a lease
    refreshed (granted or kept alive) by a later entry is spared, so a
    keep-alive that races the expiry and succeeds is never undone.
    """

    leases: tuple[int, ...]
    applied_index: int = 0


Command = Put | Delete | LeaseGrant | LeaseKeepAlive | LeaseRevoke | LeaseCheckpoint | LeaseExpire


class Request(msgspec.Struct, array_like=True, frozen=True):
    """A command as proposed: ``request_id`` lets the proposer match the result."""

    request_id: int
    command: Command


# ------------------------------------------------------------------ results


class KeyValue(msgspec.Struct, array_like=True, frozen=True):
    key: str
    value: bytes
    version: int
    lease: int = 0


class Written(msgspec.Struct, tag="ok", array_like=True, frozen=True):
    version: int  # revision of this write (for a delete of an absent key: current revision)
    absent: bool = False  # a delete that found no key: nothing changed, no revision spent


class PreconditionFailed(msgspec.Struct, tag="pf", array_like=True, frozen=True):
    key: str
    current_version: int  # 0 when the key is absent


class LeaseGranted(msgspec.Struct, tag="lgd", array_like=True, frozen=True):
    lease: int
    ttl_ms: int


class LeaseNotFound(msgspec.Struct, tag="lnf", array_like=True, frozen=True):
    lease: int


class Done(msgspec.Struct, tag="done", array_like=True, frozen=True):
    pass


class Rejected(msgspec.Struct, tag="rej", array_like=True, frozen=True):
    """The command was refused as invalid; nothing changed.

    ``code`` is ``"bad_request"`` (undecodable entry, empty key, bad
    precondition or TTL) or ``"too_large"`` (key or value above the limit), or
    ``"limit"`` (a configured count bound, e.g. leases, is reached).  Every
    member rejects the same entry the same way.
    """

    code: str
    message: str


Result = Written | PreconditionFailed | LeaseGranted | LeaseNotFound | Done | Rejected


class Event(msgspec.Struct, array_like=True, frozen=True):
    """One change, as seen by a watcher."""

    kind: str  # "put" | "delete"
    key: str
    value: bytes
    version: int


class WatchBatch(msgspec.Struct, tag="wb", array_like=True, frozen=True):
    events: tuple[Event, ...]
    revision: int  # the revision the watcher is now caught up to


class Compacted(msgspec.Struct, tag="compacted", array_like=True, frozen=True):
    """The requested start version is older than the kept history: resync from a list."""

    oldest_version: int
    revision: int


_request_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)


def encode_request(request: Request) -> bytes:
    return _request_encoder.encode(request)


def decode_request(data: bytes) -> Request:
    return _request_decoder.decode(data)
