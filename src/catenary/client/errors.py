"""Typed errors of the catenary client.

Every error the client raises derives from ``CatenaryError``, and names what
was wrong.  An argument the client can tell is bad before sending (a key that
is not a ``str`` or has no UTF-8 form, a negative limit, an unparsable
address) is a ``BadRequestError`` -- also a ``ValueError`` -- and nothing is
sent.  The one that
needs care is ``IndeterminateError``: a write was sent and its outcome is
unknown (the connection was lost after sending, the leader answered
``INDETERMINATE``, or the deadline passed while the write was in flight).
It may or may not have been applied; the caller must read to find out, and
must never treat it as a plain failure.
"""

from __future__ import annotations

from catenary.api.messages import ErrorCode


class CatenaryError(Exception):
    """Base of every error raised by the catenary client."""

    code: str = ErrorCode.INTERNAL.value


class PreconditionFailedError(CatenaryError):
    """A conditional write found another version than asked for."""

    code = "precondition_failed"

    def __init__(self, key: str, current_version: int) -> None:
        state = "absent" if current_version == 0 else f"at version {current_version}"
        super().__init__(f"precondition failed: key {key!r} is {state}")
        self.key = key
        self.current_version = current_version


class NotFoundError(CatenaryError):
    """An unknown node, lease or resource."""

    code = ErrorCode.NOT_FOUND.value


class LeaseNotFoundError(NotFoundError):
    """The lease does not exist (never granted, expired or revoked)."""

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease} not found (expired, revoked or never granted)")
        self.lease = lease


class KeyNotFoundError(NotFoundError):
    """A delete found no such key: nothing changed and no revision was spent."""

    def __init__(self, key: str, revision: int) -> None:
        super().__init__(f"key {key!r} not found: nothing deleted (revision stays {revision})")
        self.key = key
        self.revision = revision


class UnavailableError(CatenaryError):
    """No node could serve the request in time; the request surely did not take effect."""

    code = ErrorCode.UNAVAILABLE.value


class DeadlineExceededError(UnavailableError, TimeoutError):
    """The deadline passed before any attempt could be answered (nothing was in flight)."""

    code = "deadline_exceeded"


class DiskFullError(UnavailableError):
    """The node's disk is full: the write was refused before it was proposed (surely not
    applied).  Retry once space returns; reads are still served."""

    code = ErrorCode.DISK_FULL.value


class OverloadedError(UnavailableError):
    """The node's bounded queues stayed full until the deadline."""

    code = ErrorCode.OVERLOADED.value


class SealedError(UnavailableError):
    """The log's tail segment is sealed and no new segment took the append in time
    (``catenary logs reconfigure`` moves the log to a new segment)."""

    code = ErrorCode.SEALED.value


class BadRequestError(CatenaryError, ValueError):
    """The request is malformed or an argument is invalid; retrying cannot help."""

    code = ErrorCode.BAD_REQUEST.value


def not_utf8(argument: str, value: str, exc: UnicodeEncodeError) -> BadRequestError:
    """The error for a text argument with no UTF-8 form (e.g. a lone surrogate)."""
    return BadRequestError(
        f"{argument} {value!r} is not valid UTF-8: character {value[exc.start]!r} at "
        f"position {exc.start} ({exc.reason}); nothing was sent"
    )


def check_text(argument: str, value: object) -> str:
    """``value`` if it is a ``str`` with a UTF-8 form, else the ``BadRequestError`` naming it."""
    if not isinstance(value, str):
        raise BadRequestError(f"{argument} must be a str, got {type(value).__name__}")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise not_utf8(argument, value, exc) from None
    return value


class TooLargeError(BadRequestError):
    """A key or value above the configured limit."""

    code = ErrorCode.TOO_LARGE.value


class RefusedError(CatenaryError):
    """An operator action refused for safety (for example: it would lose quorum)."""

    code = ErrorCode.REFUSED.value


class InternalError(CatenaryError):
    """The node reported an internal error."""

    code = ErrorCode.INTERNAL.value


class IndeterminateError(CatenaryError):
    """A write whose outcome is unknown: it may or may not have been applied."""

    code = ErrorCode.INDETERMINATE.value


class CompactedError(CatenaryError):
    """A watch asked for history older than the node keeps: resync with a list."""

    code = "compacted"

    def __init__(self, oldest_version: int, revision: int) -> None:
        super().__init__(
            f"watch history compacted: oldest kept version is {oldest_version}, "
            f"current revision {revision}; resync by listing"
        )
        self.oldest_version = oldest_version
        self.revision = revision


class ClientClosedError(CatenaryError, RuntimeError):
    """The client was closed before the call."""

    code = "closed"


class ConnectionRefusedByNodeError(CatenaryError):
    """The node refused the handshake (another cluster, unsupported protocol)."""

    code = "handshake_refused"


class NotCatenaryNodeError(ConnectionRefusedByNodeError):
    """The address answered with something that is not the catenary handshake
    (an SSH banner, an HTTP answer, ...): it is not a catenary client port."""

    code = "not_catenary"

    def __init__(self, address: str, first_bytes: bytes) -> None:
        shown = first_bytes[:40]
        super().__init__(
            f"{address} is not a catenary node: it answered {shown!r}"
            f"{'...' if len(first_bytes) > len(shown) else ''} instead of the catenary handshake"
        )
        self.address = address
        self.first_bytes = first_bytes
