"""Hand the simulated clients' history to the linearizability checker.

Only operations with a possible effect go in: answered operations, and
writes whose outcome is unknown (indeterminate: ``return_time`` None).  Failed
operations (every attempt refused, or a read that got no answer) had no
effect and are left out.  Stale reads are not linearizable by design; they
are checked for phantoms instead: what they return was written by some put,
at the version that put was answered with.  Lease operations are checked for
early expiry: a lease must live at least its TTL after the call of its last
successful grant or keep-alive, and -- once abandoned by its client -- be
gone within its TTL and a stated bound of the last refresh.
"""

from __future__ import annotations

from collections.abc import Callable

from catenary.core.metadata.types import (
    LeaseGrant,
    LeaseGranted,
    LeaseKeepAlive,
    LeaseNotFound,
    PreconditionFailed,
    Put,
    Written,
)
from catenary.testing.linearizability import CheckResult, Operation, check
from catenary.testing.sim.history import Op

MAX_STEPS_PER_KEY = 200_000


def to_operations(history: list[Op]) -> list[Operation]:
    out: list[Operation] = []
    for op in history:
        if op.status == "failed" or op.status == "pending" or not op.checked:
            continue
        if op.kind == "get":
            if op.status != "ok" or op.stale:
                continue
            kv = op.read_result
            out.append(
                Operation(
                    op.client,
                    float(op.call_us),
                    float(op.return_us or op.call_us),
                    "get",
                    op.key,
                    result=None if kv is None else (kv.value, kv.version),
                )
            )
            continue
        kind: str = op.kind
        result = op.write_result
        if op.status == "ok":
            assert isinstance(result, Written | PreconditionFailed), result
        out.append(
            Operation(
                op.client,
                float(op.call_us),
                None if op.status != "ok" else float(op.return_us or op.call_us),
                "put" if kind == "put" else "delete",
                op.key,
                op.value,
                op.precondition,
                result if isinstance(result, Written | PreconditionFailed) else None,
            )
        )
    return out


def check_history(history: list[Op]) -> CheckResult:
    return check(to_operations(history), max_steps_per_key=MAX_STEPS_PER_KEY)


def check_stale_reads(history: list[Op]) -> str | None:
    """A stale read may be old, but never show a value no put wrote (or a wrong version)."""
    puts = {op.value: op for op in history if op.kind == "put"}
    for op in history:
        if not (op.stale and op.checked and op.status == "ok" and op.read_result is not None):
            continue
        kv = op.read_result
        source = puts.get(kv.value)
        if source is None or source.key != op.key:
            return f"stale read saw a value no put of its key wrote: {op.describe()}"
        written = source.write_result
        if source.status == "ok" and not (
            isinstance(written, Written) and written.version == kv.version
        ):
            return f"stale read {op.describe()} disagrees with {source.describe()}"
        if source.call_us > (op.return_us or op.call_us):
            return f"stale read {op.describe()} saw a put called after it: {source.describe()}"
    return None


def check_leases(history: list[Op], slack_us: int = 0) -> str | None:
    """No lease runs out before its TTL has passed since its last refresh was called.

    The leader's lessor sets a deadline of (apply time + TTL) on every grant and
    keep-alive, and a new leader resumes from the last checkpointed remaining
    time, which can only lengthen it.  So a ``LeaseNotFound`` answered before
    ``call + TTL`` of the last successful refresh means the lease expired early.
    (The leasing client never uses a lease again after revoking it.)

    ``slack_us``: the lessor's clock is the ``now_ms`` of the member's last tick,
    which may precede the client's call by up to one tick interval.
    """
    refreshed: dict[int, tuple[int, int, Op]] = {}  # lease -> (call_us, ttl_ms, op)
    for op in sorted(history, key=lambda o: o.op_id):
        command = op.command
        if command is None or op.status != "ok":
            continue
        result = op.write_result
        if isinstance(result, LeaseGranted) and isinstance(command, LeaseGrant | LeaseKeepAlive):
            refreshed[result.lease] = (op.call_us, result.ttl_ms, op)
        elif isinstance(result, LeaseNotFound):
            known = refreshed.get(result.lease)
            if known is None:
                continue
            call_us, ttl_ms, source = known
            returned = op.return_us if op.return_us is not None else op.call_us
            if returned < call_us + ttl_ms * 1000 - slack_us:
                return (
                    f"lease {result.lease} expired early: {op.describe()} after "
                    f"{source.describe()} with a TTL of {ttl_ms} ms"
                )
    return None


def check_leases_late(
    history: list[Op],
    leaderless_us: Callable[[int, int], int],
    leader_changes: Callable[[int, int], list[int]],
    staleness_us: Callable[[int, int], int],
    decided_us: Callable[[int], int | None],
    *,
    drift: float,
    bound_us: int,
    per_change_us: int,
) -> str | None:
    """A lease nobody keeps alive is decided expired within TTL + a bound of its
    last refresh.

    The leasing client abandons some of its leases and later probes them with a
    put attached to the lease.  The deadline is ``TTL * (1 + drift)`` (the
    leader measures it on its own clock, which may run slow by ``drift``) plus
    ``bound_us``, not counting time without a leader (``leaderless_us(a, b)``)
    and, per leader change in between (``leader_changes(a, b)``: their times),
    ``per_change_us`` plus how stale the newest checkpoint was at that change
    (``staleness_us(change, since)``: a new leader resumes each lease from it,
    so the lease runs that much longer; checkpoints refused during a transfer
    or a partition make it older than one interval).  A probe that
    succeeds although it was called past the deadline is a violation unless the
    expiry had been decided by then (``decided_us(lease)``: when a leader's
    LeaseExpire naming it was first persisted): committing the decision takes
    as long as the network and disks make any write take, which is liveness,
    not the lessor's clock.  So a lease whose expiry is decided late — e.g. a
    new leader gave it a full TTL again — is caught.  Leases with an
    indeterminate refresh are skipped (it may have applied at any time).
    """
    refreshed: dict[int, tuple[int, int, Op]] = {}  # lease -> (return_us, ttl_ms, op)
    unknown: set[int] = set()
    for op in sorted(history, key=lambda o: o.op_id):
        command = op.command
        if isinstance(command, LeaseKeepAlive) and op.status == "indeterminate":
            unknown.add(command.lease)
        if command is None or op.status != "ok" or op.return_us is None:
            continue
        result = op.write_result
        if isinstance(result, LeaseGranted) and isinstance(command, LeaseGrant | LeaseKeepAlive):
            refreshed[result.lease] = (op.return_us, result.ttl_ms, op)
    for op in sorted(history, key=lambda o: o.op_id):
        command = op.command
        if not isinstance(command, Put) or not op.probe or op.status != "ok":
            continue
        if not isinstance(op.write_result, Written) or command.lease in unknown:
            continue
        known = refreshed.get(command.lease)
        if known is None:
            continue
        since_us, ttl_ms, source = known
        allowed = (
            int(ttl_ms * 1000 * (1 + drift))
            + bound_us
            + leaderless_us(since_us, op.call_us)
            + sum(
                per_change_us + staleness_us(change, since_us)
                for change in leader_changes(since_us, op.call_us)
            )
        )
        decided = decided_us(command.lease)
        if decided is not None and decided <= since_us + allowed:
            continue  # decided in time; the expiry's commit may lag behind
        if op.call_us > since_us + allowed:
            return (
                f"lease {command.lease} expired late: {op.describe()} still found it "
                f"{(op.call_us - since_us) // 1000} ms after {source.describe()} "
                f"(TTL {ttl_ms} ms, allowed {allowed // 1000} ms)"
            )
    return None
