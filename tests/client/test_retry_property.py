"""Property: whatever the node does to a write, the client never applies it twice and
never reports a plain failure for a write that may have happened."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catenary.api import messages as m
from catenary.client import Client, DeadlineExceededError, IndeterminateError

from .fakenode import FakeNode

pytestmark = pytest.mark.timeout(60)

# What the node does with one attempt of a put.
ACTIONS = (
    "serve",
    "drop",
    "apply_drop",
    "unavailable",
    "overloaded",
    "not_leader",
    "indeterminate",
)


def _reply(action: str, request: m.Request, node: FakeNode) -> m.Reply | str | None:
    match action:
        case "serve":
            return None
        case "drop" | "apply_drop":
            return action
        case "unavailable":
            return m.ErrorReply(request.id, m.ErrorCode.UNAVAILABLE, "no quorum")
        case "overloaded":
            return m.ErrorReply(request.id, m.ErrorCode.OVERLOADED, "queue full")
        case "not_leader":  # points back at the same node: as after an election
            return m.ErrorReply(
                request.id, m.ErrorCode.NOT_LEADER, "moved", leader=1, leader_address=node.address
            )
        case _:
            return m.ErrorReply(request.id, m.ErrorCode.INDETERMINATE, "leader lost")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(st.lists(st.lists(st.sampled_from(ACTIONS), max_size=4), min_size=1, max_size=6))
def test_a_write_is_applied_at_most_once_and_never_misreported(
    scripts: list[list[str]],
) -> None:
    async def body() -> None:
        node = await FakeNode().start()
        plans = {f"/p/{i}": list(script) for i, script in enumerate(scripts)}
        attempts: dict[str, int] = {key: 0 for key in plans}

        def hook(request: m.Request) -> m.Reply | str | None:
            if not isinstance(request, m.Put):
                return None
            attempts[request.key] += 1
            plan = plans[request.key]
            return _reply(plan.pop(0) if plan else "serve", request, node)

        node.hook = hook
        try:
            async with Client(
                [node.address], timeout_s=2, backoff_initial_ms=1, backoff_max_ms=5
            ) as client:
                for key in plans:
                    applied_before = node.revision
                    try:
                        version = await client.metadata.put(key, b"v")
                    except IndeterminateError:
                        assert node.revision - applied_before <= 1
                        continue
                    except DeadlineExceededError:
                        assert node.revision == applied_before, "a plain failure that happened"
                        continue
                    assert node.revision - applied_before == 1, "applied more than once"
                    assert node.kv[key].version == version
        finally:
            await node.stop()

    asyncio.run(body())
