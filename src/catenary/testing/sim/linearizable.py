"""Hand the simulated clients' history to the linearizability checker.

Only operations with a possible effect go in: answered operations, and
writes whose outcome is unknown (indeterminate: ``return_time`` None).  Failed
operations (every attempt refused, or a read that got no answer) had no
effect and are left out.  Stale reads are not linearizable by design; they
are checked for phantoms instead: what they return was written by some put,
at the version that put was answered with.
"""

from __future__ import annotations

from catenary.core.metadata.types import PreconditionFailed, Written
from catenary.testing.linearizability import CheckResult, Operation, check
from catenary.testing.sim.history import Op

MAX_STEPS_PER_KEY = 200_000


def to_operations(history: list[Op]) -> list[Operation]:
    out: list[Operation] = []
    for op in history:
        if op.status == "failed" or op.status == "pending":
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
        if not (op.stale and op.status == "ok" and op.read_result is not None):
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
