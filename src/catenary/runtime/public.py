"""Conversion between the metadata core's structs and the public API's types.

The node serves clients in ``catenary.api.types`` and runs the core in
``catenary.core.metadata.types``; this module is the one place that knows
both, so either side can change without the other.  The conversions copy
fields one by one (no reflection): they run once per key, result or event a
client receives.
"""

from __future__ import annotations

from catenary.api import types as api
from catenary.core.metadata import types as md


def precondition(value: api.Precondition) -> md.Precondition:
    """A client's precondition, as the core checks it."""
    return md.Precondition(value.kind, value.version)


def key_value(kv: md.KeyValue | None) -> api.KeyValue | None:
    if kv is None:
        return None
    return api.KeyValue(kv.key, kv.value, kv.version, kv.lease)


def key_values(kvs: tuple[md.KeyValue, ...] | list[md.KeyValue]) -> tuple[api.KeyValue, ...]:
    return tuple([api.KeyValue(kv.key, kv.value, kv.version, kv.lease) for kv in kvs])


def write_result(result: md.Result) -> api.WriteResult:
    """The public outcome of an applied write.

    A ``Rejected`` write has no public result: the node answers it with an
    error (its code mapped from the rejection) before it gets here.
    """
    match result:
        case md.Written():
            return api.Written(result.version, result.absent)
        case md.PreconditionFailed():
            return api.PreconditionFailed(result.key, result.current_version)
        case md.LeaseGranted():
            return api.LeaseGranted(result.lease, result.ttl_ms)
        case md.LeaseNotFound():
            return api.LeaseNotFound(result.lease)
        case md.Done():
            return api.Done()
        case md.Rejected():
            raise ValueError(f"a rejected write has no public result: {result.message}")


def watch_answer(answer: md.WatchBatch | md.Compacted) -> api.WatchBatch | api.Compacted:
    if isinstance(answer, md.Compacted):
        return api.Compacted(answer.oldest_version, answer.revision)
    return api.WatchBatch(
        tuple([api.Event(e.kind, e.key, e.value, e.version) for e in answer.events]),
        answer.revision,
    )
