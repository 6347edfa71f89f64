"""Hand the simulated clients' history to the linearizability checker.

Only operations with a possible effect go in: answered operations, and
writes whose outcome is unknown (indeterminate: ``return_time`` None).  Failed
operations (every attempt refused, or a read that got no answer) had no
effect and are left out.
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
            if op.status != "ok":
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
