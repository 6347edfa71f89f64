"""The error codes of the client protocol, and how a node raises one.

An ``ErrorReply`` carries a ``code`` from ``ErrorCode``.  Anything that
serves a client request (the node, the hosts under it) raises a
``ServiceError`` with that code; the client port turns it into the
``ErrorReply`` for the request's id.  Both live here, beside the wire schema,
so that the hosts and the port agree on the codes without importing each
other.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class ErrorCode(StrEnum):
    NOT_LEADER = "not_leader"  # retry at leader_address (may be empty: unknown yet)
    INDETERMINATE = "indeterminate"  # a write whose outcome is unknown
    UNAVAILABLE = "unavailable"  # no quorum / shutting down / not provisioned; safe to retry
    BAD_REQUEST = "bad_request"  # malformed or invalid argument; do not retry
    TOO_LARGE = "too_large"  # key or value above the configured limit; do not retry
    OVERLOADED = "overloaded"  # a bounded queue is full; retry with backoff
    DISK_FULL = "disk_full"  # the node's disk is full: the write was not proposed; retry later
    NOT_FOUND = "not_found"  # unknown node, lease or resource
    REFUSED = "refused"  # an operator action refused for safety (e.g. would lose quorum)
    SEALED = "sealed"  # the log's tail segment is sealed or moving: retry (the client does)
    INTERNAL = "internal"


class ErrorReply(msgspec.Struct, tag="err", array_like=True, frozen=True):
    id: int
    code: str  # an ErrorCode value
    message: str
    leader: int = 0
    leader_address: str = ""  # client address of the leader, when known
    current_version: int = 0  # for failed preconditions reported as errors


class ServiceError(Exception):
    """A request failed with a protocol error code (becomes an ``ErrorReply``)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        leader: int = 0,
        leader_address: str = "",
        current_version: int = 0,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.leader = leader
        self.leader_address = leader_address
        self.current_version = current_version

    def reply(self, request_id: int) -> ErrorReply:
        return ErrorReply(
            id=request_id,
            code=str(self.code),
            message=self.message,
            leader=self.leader,
            leader_address=self.leader_address,
            current_version=self.current_version,
        )
