"""The public types of the metadata service: what a client sends and gets back.

These are catenary's promise to its users, independent of the metadata core's
own structs (``catenary.core.metadata.types``): the core may change its
commands, results and storage without breaking a client, because the node
converts between the two at its port (``catenary.runtime.public``).  Their
wire form is msgpack arrays; the tags of the tagged ones are part of the
protocol (``docs/design/wire-format.md``).

Versions: the store keeps one global revision that grows by one for every
applied write.  A key's ``version`` is the revision of its last modification;
version 0 means "absent".
"""

from __future__ import annotations

import msgspec


class Precondition(msgspec.Struct, array_like=True, frozen=True):
    """When a write may happen: always, only if the key is absent, or only at a version."""

    kind: str = "none"  # "none" | "absent" | "version"
    version: int = 0  # for kind == "version"


class KeyValue(msgspec.Struct, array_like=True, frozen=True):
    key: str
    value: bytes
    version: int  # the revision of the key's last modification
    lease: int = 0  # 0 = not attached to a lease


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


WriteResult = Written | PreconditionFailed | LeaseGranted | LeaseNotFound | Done
"""The outcome of an applied write.  A write the node refused never gets one:
it is answered with an ``ErrorReply`` instead."""


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
