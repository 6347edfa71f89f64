"""The catenary client: ``Client`` (asyncio) and ``SyncClient`` (blocking).

What it returns are the public types of ``catenary.api.types`` (re-exported
here), never the metadata core's structs.
"""

from catenary.api.types import Event, KeyValue
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
    DiskFullError,
    IndeterminateError,
    InternalError,
    KeyNotFoundError,
    LeaseNotFoundError,
    NotCatenaryNodeError,
    NotFoundError,
    OverloadedError,
    PreconditionFailedError,
    RefusedError,
    SealedError,
    TooLargeError,
    UnavailableError,
)
from catenary.client.logs import (
    Appender,
    AppendResult,
    LogGap,
    LogInfo,
    LogRecord,
    LogsClient,
    TailInfo,
    TrimResult,
)
from catenary.client.sync import SyncClient

__all__ = [
    "AppendResult",
    "Appender",
    "LogGap",
    "LogInfo",
    "LogRecord",
    "LogsClient",
    "SealedError",
    "TailInfo",
    "TrimResult",
    "BadRequestError",
    "CatenaryError",
    "Client",
    "ClientClosedError",
    "CompactedError",
    "ConnectionRefusedByNodeError",
    "DeadlineExceededError",
    "DiskFullError",
    "Event",
    "GetResult",
    "IndeterminateError",
    "InternalError",
    "KeyValue",
    "KeyNotFoundError",
    "LeaseNotFoundError",
    "NotCatenaryNodeError",
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
