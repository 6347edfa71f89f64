"""The checkers of a metadata fault run.  Each returns one ``Verdict``.

- ``linearizable``: the gets, puts and deletes of the workload keys (failed
  operations left out: they took no effect; indeterminate writes in as
  "maybe, at any instant after the call") are checked with
  ``catenary.testing.linearizability`` (per key, Wing-Gong-Lowe).
- ``no_lost_writes``: the read-back after the final heal shows, per key, a
  version no older than the newest acknowledged write (or, absent, a delete
  that may have come after it).
- ``stale_reads``: a stale read returns a value some put wrote, with the
  version that put was acknowledged with.
- ``watches``: per subscription, versions only grow (never repeated, never
  back), every put event carries a value written to that key at that
  version, and every acknowledged change of the key between the
  subscription's start and its last event was delivered.  A subscription
  ended by ``CompactedError`` resumes from a new read (allowed).  The final
  marker write of each key must be delivered.
- ``leases``: a key attached to a lease is present while the lease must be
  alive: until (call time of the last acknowledged grant or keep-alive) +
  TTL, counting only acknowledgements received before the read was made.  A
  keep-alive answered "lease not found" inside that bound is a violation too.
"""

from __future__ import annotations

import time
from collections import defaultdict

from catenary.core.metadata.types import Precondition, PreconditionFailed, Written
from catenary.testing import linearizability as lin
from catenary.testing.faults.history import Record, Verdict

FINAL = 9999  # process number of the read-back and marker operations


def to_operations(records: list[Record]) -> list[lin.Operation]:
    ops: list[lin.Operation] = []
    for r in records:
        if r.kind not in ("get", "put", "delete") or r.outcome in (None, "failed"):
            continue
        if r.kind == "get":
            if r.outcome != "ok":
                continue
            result: lin.GetResult | lin.WriteResult = (r.got, r.version) if r.found else None
            ops.append(lin.Operation(r.process, r.call, r.ret, "get", r.key, result=result))
            continue
        if r.error == "lease-not-found":
            continue  # refused: no effect
        precondition = Precondition(r.precondition, r.if_version)
        if r.outcome == "indeterminate":
            result = None
            ret = None
        elif r.precondition_failed:
            result, ret = PreconditionFailed(r.key, r.version), r.ret
        else:
            result, ret = Written(r.version), r.ret
        kind: lin.Kind = "put" if r.kind == "put" else "delete"
        ops.append(
            lin.Operation(r.process, r.call, ret, kind, r.key, r.value, precondition, result)
        )
    return ops


def linearizable(records: list[Record], max_steps_per_key: int = 2_000_000) -> Verdict:
    ops = to_operations(records)
    started = time.monotonic()
    result = lin.check(ops, max_steps_per_key=max_steps_per_key)
    took = time.monotonic() - started
    detail = f"{len(ops)} operations, {result.steps} search steps, checked in {took:.2f} s"
    if result.outcome == "ok":
        return Verdict("linearizable", "ok", detail)
    return Verdict(
        "linearizable", result.outcome, f"{detail}; key {result.key}: {result.explanation}"
    )


def _acknowledged(r: Record) -> bool:
    return (
        r.kind in ("put", "delete")
        and r.outcome == "ok"
        and not r.precondition_failed
        and r.error != "lease-not-found"
    )


def no_lost_writes(records: list[Record], keys: list[str]) -> Verdict:
    lost: list[str] = []
    unread: list[str] = []
    acked = 0
    for key in keys:
        on_key = [r for r in records if r.key == key and r.process != FINAL]
        final = [r for r in records if r.key == key and r.process == FINAL and r.kind == "get"]
        final_read = next((r for r in final if r.outcome == "ok"), None)
        writes = [r for r in on_key if _acknowledged(r)]
        acked += len(writes)
        if not writes:
            continue
        newest = max(writes, key=lambda r: r.version)
        if final_read is None:
            unread.append(key)
            continue
        if final_read.found:
            if final_read.version < newest.version:
                lost.append(
                    f"{key}: read back version {final_read.version} < acknowledged "
                    f"{newest.kind} {newest.value!r} at version {newest.version}"
                )
        elif newest.kind == "put":
            later_deletes = [
                r
                for r in on_key
                if r.kind == "delete"
                and r.outcome in ("ok", "indeterminate")
                and not r.precondition_failed
                and r.call >= newest.call
            ]
            if not later_deletes:
                lost.append(
                    f"{key}: read back absent, but {newest.value!r} was acknowledged at "
                    f"version {newest.version} and no delete came after it"
                )
    if lost:
        return Verdict("no-lost-writes", "violation", "; ".join(lost))
    if unread:
        return Verdict("no-lost-writes", "unknown", f"no read-back of {unread}")
    return Verdict("no-lost-writes", "ok", f"{acked} acknowledged writes over {len(keys)} keys")


def stale_reads(records: list[Record]) -> Verdict:
    puts: dict[tuple[str, bytes], Record] = {}
    for r in records:
        if r.kind == "put" and r.outcome in ("ok", "indeterminate") and not r.precondition_failed:
            puts[(r.key, r.value)] = r
    bad: list[str] = []
    count = 0
    for r in records:
        if r.kind != "stale-get" or r.outcome != "ok":
            continue
        count += 1
        if not r.found:
            continue
        writer = puts.get((r.key, r.got))
        if writer is None:
            bad.append(f"{r.key}: stale read {r.got!r}, which no put wrote")
        elif writer.outcome == "ok" and writer.version != r.version:
            bad.append(
                f"{r.key}: stale read {r.got!r} at version {r.version}, written at {writer.version}"
            )
    if bad:
        return Verdict("stale-reads", "violation", f"{len(bad)} bad: " + "; ".join(bad[:5]))
    return Verdict("stale-reads", "ok", f"{count} stale reads return written values")


def watches(
    records: list[Record],
    segments: dict[str, list],  # type: ignore[type-arg]
    final_markers: dict[str, bytes],
) -> Verdict:
    if not segments or not any(segments.values()):
        return Verdict("watches", "skipped", "no watchers")
    puts: dict[tuple[str, bytes], Record] = {}
    changes: dict[str, dict[int, str]] = defaultdict(dict)  # key -> version -> kind
    for r in records:
        if r.kind == "put" and r.outcome in ("ok", "indeterminate") and not r.precondition_failed:
            puts[(r.key, r.value)] = r
        if _acknowledged(r) and (r.kind == "put" or r.precondition == "version"):
            changes[r.key][r.version] = r.kind
    bad: list[str] = []
    events = 0
    compacted = 0
    for key, subscriptions in segments.items():
        for segment in subscriptions:
            compacted += segment.ended_by == "compacted"
            last = segment.start
            seen: set[int] = set()
            for event in segment.events:
                events += 1
                if event.key != key:
                    bad.append(f"{key}: event of another key {event.key}")
                if event.version <= last:
                    bad.append(
                        f"{key}: event version {event.version} after {last} (repeated or back)"
                    )
                last = max(last, event.version)
                seen.add(event.version)
                if event.kind == "put":
                    writer = puts.get((key, event.value))
                    if writer is None:
                        bad.append(f"{key}: event put {event.value!r}, which no put wrote")
                    elif writer.outcome == "ok" and writer.version != event.version:
                        bad.append(
                            f"{key}: event {event.value!r} at {event.version}, "
                            f"written at {writer.version}"
                        )
            if segment.events:
                top = segment.events[-1].version
                missed = [
                    (v, kind)
                    for v, kind in changes[key].items()
                    if segment.start < v <= top and v not in seen
                ]
                for v, kind in sorted(missed)[:3]:
                    bad.append(
                        f"{key}: acknowledged {kind} at version {v} not delivered "
                        f"(subscription from {segment.start} delivered up to {top})"
                    )
        marker = final_markers.get(key)
        if marker is not None and not any(
            e.value == marker for s in subscriptions for e in s.events
        ):
            bad.append(f"{key}: the final write was not delivered within the bound")
    resubscribed = sum(max(0, len(s) - 1) for s in segments.values())
    detail = (
        f"{events} events on {len(segments)} keys, {resubscribed} resubscriptions "
        f"({compacted} compacted)"
    )
    if bad:
        return Verdict("watches", "violation", f"{detail}; " + "; ".join(bad[:6]))
    return Verdict("watches", "ok", detail)


def leases(episodes: list) -> Verdict:  # type: ignore[type-arg]
    if not episodes:
        return Verdict("leases", "skipped", "no lease holders")
    bad: list[str] = []
    checked = 0
    for episode in episodes:
        ttl_s = episode.ttl_ms / 1000
        extensions = [
            (r.ret, r.call + ttl_s)
            for r in episode.records
            if r.kind in ("grant", "keepalive") and r.outcome == "ok" and not r.error
        ]
        put = next((r for r in episode.records if r.kind == "put"), None)
        if put is None or put.outcome != "ok" or put.error:
            continue
        revoke_at = min(
            (r.call for r in episode.records if r.kind == "revoke"), default=float("inf")
        )

        def safe_until(
            t: float, extensions: list[tuple[float | None, float]] = extensions
        ) -> float:
            return max((u for ret, u in extensions if ret is not None and ret <= t), default=0.0)

        for r in episode.records:
            if r.outcome != "ok" or r.ret is None or r.call >= revoke_at:
                continue
            if r.kind == "get" and put.ret is not None and r.call >= put.ret:
                checked += 1
                if r.found and r.got != put.value:
                    bad.append(f"lease {episode.lease}: {episode.key} read {r.got!r}")
                elif not r.found and r.ret < safe_until(r.call):
                    bad.append(
                        f"lease {episode.lease} (ttl {episode.ttl_ms} ms): {episode.key} gone "
                        f"by {r.ret:.3f} s, alive until at least {safe_until(r.call):.3f} s"
                    )
            elif r.kind == "keepalive" and r.error == "lease-not-found":
                checked += 1
                if r.ret < safe_until(r.call):
                    bad.append(
                        f"lease {episode.lease} (ttl {episode.ttl_ms} ms): keep-alive found it "
                        f"gone by {r.ret:.3f} s, alive until at least {safe_until(r.call):.3f} s"
                    )
    detail = f"{len(episodes)} leases, {checked} observations while held"
    if bad:
        return Verdict("leases", "violation", f"{detail}; {len(bad)} early: " + "; ".join(bad[:4]))
    return Verdict("leases", "ok", detail)
