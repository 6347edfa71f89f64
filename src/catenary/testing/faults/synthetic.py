"""Synthetic linearizable metadata histories, for measuring the checker at scale.

``history(n, ...)`` makes ``n`` operations by ``processes`` concurrent
clients over ``keys`` keys: each operation gets a call time, a linearization
point inside its interval and a return time; applying the operations in
linearization-point order to a versioned store (one global revision) gives
their results.  Puts (unique values), compare-and-sets on a version the
client last read (often stale: they fail), puts if absent, deletes and gets;
a fraction of the writes is indeterminate (took effect or not, half each).
The result is linearizable by construction.
"""

from __future__ import annotations

from random import Random

from catenary.core.metadata.types import Precondition, PreconditionFailed, Written
from catenary.testing import linearizability as lin


def history(
    n: int,
    *,
    keys: int = 8,
    processes: int = 8,
    indeterminate: float = 0.01,
    seed: int = 1,
) -> list[lin.Operation]:
    rng = Random(seed)
    plans: list[tuple[float, float, float, int, str, str, bytes, Precondition, bool, bool]] = []
    clocks = [rng.random() for _ in range(processes)]
    last_seen: dict[tuple[int, str], int] = {}
    for i in range(n):
        p = i % processes
        call = clocks[p]
        point = call + rng.uniform(0.0, 0.004)
        ret = point + rng.uniform(0.0, 0.004)
        clocks[p] = ret + rng.uniform(0.0, 0.002)
        key = f"/k{rng.randrange(keys)}"
        roll = rng.random()
        kind = "get"
        pre = Precondition()
        if roll < 0.35:
            kind = "put"
        elif roll < 0.5:
            kind, pre = "put", Precondition("version", last_seen.get((p, key), 0) or 1)
        elif roll < 0.55:
            kind, pre = "put", Precondition("absent")
        elif roll < 0.65:
            kind = "delete"
        unknown = kind != "get" and rng.random() < indeterminate
        applies = not unknown or rng.random() < 0.5
        plans.append((point, call, ret, p, kind, key, f"v{i}".encode(), pre, unknown, applies))
        last_seen[(p, key)] = last_seen.get((p, key), 0) + rng.randrange(0, 3)
    state: dict[str, tuple[bytes, int]] = {}
    revision = 0
    ops: list[lin.Operation] = []
    for point, call, ret, p, kind, key, value, pre, unknown, applies in sorted(plans):
        del point
        current = state.get(key)
        result: lin.GetResult | lin.WriteResult
        if kind == "get":
            result = current
            ops.append(lin.Operation(p, call, ret, "get", key, result=result))
            continue
        version_now = current[1] if current else 0
        holds = (
            pre.kind == "none"
            or (pre.kind == "absent" and current is None)
            or (pre.kind == "version" and current is not None and current[1] == pre.version)
        )
        if not applies:
            ops.append(lin.Operation(p, call, None, kind, key, value, pre))  # type: ignore[arg-type]
            continue
        if not holds:
            result = PreconditionFailed(key, version_now)
        elif kind == "put":
            revision += 1
            state[key] = (value, revision)
            result = Written(revision)
        elif current is not None:
            revision += 1
            del state[key]
            result = Written(revision)
        else:
            result = Written(revision)
        ops.append(
            lin.Operation(p, call, None if unknown else ret, kind, key, value, pre, result)  # type: ignore[arg-type]
        )
    return ops
