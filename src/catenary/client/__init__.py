"""The catenary client: ``Client`` (asyncio) and ``SyncClient`` (blocking)."""

from catenary.client.client import (
    Client,
    GetResult,
    ListResult,
    MetadataClient,
    ServerSet,
    Watcher,
)
from catenary.client.errors import (
    BadRequestError,
    CatenaryError,
    ClientClosedError,
    CompactedError,
    ConnectionRefusedByNodeError,
    DeadlineExceededError,
    IndeterminateError,
    InternalError,
    LeaseNotFoundError,
    NotFoundError,
    OverloadedError,
    PreconditionFailedError,
    RefusedError,
    TooLargeError,
    UnavailableError,
)
from catenary.client.sync import SyncClient

__all__ = [
    "BadRequestError",
    "CatenaryError",
    "Client",
    "ClientClosedError",
    "CompactedError",
    "ConnectionRefusedByNodeError",
    "DeadlineExceededError",
    "GetResult",
    "IndeterminateError",
    "InternalError",
    "LeaseNotFoundError",
    "ListResult",
    "MetadataClient",
    "NotFoundError",
    "OverloadedError",
    "PreconditionFailedError",
    "RefusedError",
    "ServerSet",
    "SyncClient",
    "TooLargeError",
    "UnavailableError",
    "Watcher",
]
