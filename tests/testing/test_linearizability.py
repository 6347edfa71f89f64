"""The linearizability checker: accepts what it must, rejects what it must."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catenary.core.metadata.state import MetadataStateMachine
from catenary.core.metadata.types import (
    Delete,
    Precondition,
    PreconditionFailed,
    Put,
    Request,
    Written,
)
from catenary.testing.linearizability import (
    GetResult,
    HistoryRecorder,
    Operation,
    check,
)

ABSENT = Precondition("absent")


def put(
    p: int,
    call: float,
    ret: float | None,
    value: bytes,
    result: Written | PreconditionFailed | None,
    key: str = "k",
    pre: Precondition | None = None,
) -> Operation:
    return Operation(p, call, ret, "put", key, value, pre or Precondition(), result)


def delete(
    p: int,
    call: float,
    ret: float | None,
    result: Written | PreconditionFailed | None,
    key: str = "k",
    pre: Precondition | None = None,
) -> Operation:
    return Operation(p, call, ret, "delete", key, b"", pre or Precondition(), result)


def get(p: int, call: float, ret: float, result: GetResult, key: str = "k") -> Operation:
    return Operation(p, call, ret, "get", key, result=result)


def test_empty_and_sequential_histories_are_linearizable() -> None:
    assert check([]).ok
    history = [
        get(1, 0, 1, None),
        put(1, 2, 3, b"a", Written(1)),
        get(2, 4, 5, (b"a", 1)),
        delete(1, 6, 7, Written(2)),
        get(2, 8, 9, None),
        delete(2, 10, 11, Written(2)),  # absent: answers the current revision
    ]
    result = check(history)
    assert result.ok and result.outcome == "ok" and result.operations == 6


def test_overlapping_operations_may_linearize_in_either_order() -> None:
    history = [
        put(1, 0, 10, b"a", Written(1)),
        get(2, 1, 2, None),  # before the put takes effect
        get(3, 3, 4, (b"a", 1)),  # after
        put(4, 5, 20, b"b", Written(2)),
        get(5, 6, 30, (b"a", 1)),  # overlaps the second put: may come first
        get(6, 7, 8, (b"a", 1)),
    ]
    assert check(history).ok


def test_touching_intervals_count_as_overlapping() -> None:
    # The get is called at the instant the put returns: either order is allowed.
    assert check([put(1, 0, 5, b"a", Written(1)), get(2, 5, 6, None)]).ok


def test_a_read_after_a_newer_value_cannot_see_an_older_one() -> None:
    history = [
        put(1, 0, 10, b"a", Written(1)),
        get(2, 1, 2, None),
        get(3, 3, 4, (b"a", 1)),
        get(2, 5, 6, None),  # went back in time
    ]
    result = check(history)
    assert result.outcome == "violation" and result.key == "k"


def test_stale_read_is_rejected() -> None:
    history = [
        put(1, 0, 1, b"old", Written(1)),
        put(1, 2, 3, b"new", Written(2)),
        get(2, 4, 5, (b"old", 1)),  # starts after the new put returned
    ]
    result = check(history)
    assert result.outcome == "violation"
    assert result.key == "k"
    assert "get('k') -> (b'old', version 1)" in result.explanation
    assert "b'new' at version 2" in result.explanation


def test_lost_write_is_rejected() -> None:
    history = [put(1, 0, 1, b"a", Written(1)), get(2, 2, 3, None)]
    assert check(history).outcome == "violation"


def test_versions_must_grow_per_key() -> None:
    history = [put(1, 0, 1, b"a", Written(5)), put(1, 2, 3, b"b", Written(3))]
    assert check(history).outcome == "violation"
    # ...but concurrent writes may carry them in either order
    history = [put(1, 0, 4, b"a", Written(5)), put(2, 1, 3, b"b", Written(3))]
    assert check([*history, get(3, 5, 6, (b"a", 5))]).ok
    assert check([*history, get(3, 5, 6, (b"b", 3))]).outcome == "violation"


def test_two_successful_put_if_absent_are_rejected() -> None:
    history = [
        put(1, 0, 10, b"a", Written(1), pre=ABSENT),
        put(2, 0, 10, b"b", Written(2), pre=ABSENT),
    ]
    assert check(history).outcome == "violation"


def test_preconditions_failures_must_name_the_current_version() -> None:
    base = [put(1, 0, 1, b"a", Written(4))]
    good = [
        put(2, 2, 3, b"b", PreconditionFailed("k", 4), pre=ABSENT),
        put(2, 4, 5, b"b", PreconditionFailed("k", 4), pre=Precondition("version", 3)),
        put(2, 6, 7, b"c", Written(9), pre=Precondition("version", 4)),
        delete(2, 8, 9, PreconditionFailed("k", 9), pre=Precondition("version", 4)),
    ]
    assert check(base + good).ok
    for wrong in [
        put(2, 2, 3, b"b", PreconditionFailed("k", 3), pre=ABSENT),  # wrong version named
        put(2, 2, 3, b"b", PreconditionFailed("k", 4)),  # no precondition cannot fail
        put(2, 2, 3, b"b", PreconditionFailed("k", 4), pre=Precondition("version", 4)),
        put(2, 2, 3, b"b", Written(5), pre=Precondition("version", 3)),  # should have failed
        delete(2, 2, 3, Written(5), pre=ABSENT),
    ]:
        assert check([*base, wrong]).outcome == "violation", wrong


def test_indeterminate_write_may_have_taken_effect() -> None:
    history = [
        put(1, 0, 1, b"a", Written(1)),
        put(2, 2, None, b"b", None),  # outcome unknown
        get(3, 10, 11, (b"b", 7)),  # it did happen; the read pins its version
        get(3, 12, 13, (b"b", 7)),
    ]
    assert check(history).ok
    # the pinned version is then fixed
    assert check([*history, get(3, 14, 15, (b"b", 8))]).outcome == "violation"
    # a pinned version must be above what came before
    history = [
        put(1, 0, 1, b"a", Written(5)),
        put(2, 2, None, b"b", None),
        get(3, 10, 11, (b"b", 5)),
    ]
    assert check(history).outcome == "violation"


def test_indeterminate_write_may_not_have_taken_effect() -> None:
    history = [
        put(1, 0, 1, b"a", Written(1)),
        put(2, 2, None, b"b", None),
        get(3, 10, 11, (b"a", 1)),
    ]
    assert check(history).ok
    # ...but it cannot take effect before it was called
    history = [get(3, 0, 1, (b"b", 1)), put(2, 2, None, b"b", None)]
    assert check(history).outcome == "violation"
    # ...nor take effect, be seen, and then vanish
    history = [
        put(2, 0, None, b"b", None),
        get(3, 10, 11, (b"b", 3)),
        get(3, 12, 13, None),
    ]
    assert check(history).outcome == "violation"


def test_indeterminate_conditional_write_pins_unknown_versions() -> None:
    history = [
        put(1, 0, None, b"a", None),  # unknown version
        put(2, 5, 6, b"b", Written(9), pre=Precondition("version", 3)),  # so it was 3
        get(3, 7, 8, (b"b", 9)),
    ]
    assert check(history).ok
    history = [
        put(1, 0, None, b"a", None),
        put(2, 5, 6, b"b", PreconditionFailed("k", 4), pre=ABSENT),  # so it was 4
        get(3, 7, 8, (b"a", 4)),
    ]
    assert check(history).ok
    assert check([*history[:2], get(3, 7, 8, (b"a", 5))]).outcome == "violation"


def test_a_chain_of_unknown_writes_can_explain_a_version() -> None:
    # Version 3 is only reachable by the unanswered delete and then the
    # unanswered put-if-absent, in that order.
    history = [
        put(1, 0, 1, b"x", Written(1)),
        delete(2, 2, None, None),
        put(3, 2, None, b"g", None, pre=ABSENT),
        put(4, 10, 11, b"y", PreconditionFailed("k", 3), pre=ABSENT),
    ]
    assert check(history).ok
    # without the delete it is impossible
    assert check([history[0], *history[2:]]).outcome == "violation"


def test_violations_are_found_among_unknown_writes() -> None:
    history = [
        put(1, 0, 1, b"x", Written(1)),
        put(2, 2, None, b"g", None),
        put(3, 2, None, b"h", None, pre=ABSENT),
        get(4, 5, 6, (b"x", 1)),
        get(4, 7, 8, None),  # nothing could have deleted it
    ]
    result = check(history)
    assert result.outcome == "violation" and "get('k') -> absent" in result.explanation


def test_initial_state_is_respected() -> None:
    history = [get(1, 0, 1, (b"x", 3)), put(1, 2, 3, b"y", Written(4))]
    assert check(history).outcome == "violation"
    assert check(history, initial={"k": (b"x", 3)}).ok


def test_cross_key_revisions_never_go_back() -> None:
    history = [
        put(1, 0, 1, b"a", Written(10), key="k1"),
        put(2, 2, 3, b"b", Written(5), key="k2"),
    ]
    result = check(history)
    assert result.outcome == "violation" and result.key == "k2"
    assert "revision went back" in result.explanation
    concurrent = [
        put(1, 0, 3, b"a", Written(10), key="k1"),
        put(2, 2, 3, b"b", Written(5), key="k2"),
    ]
    assert check(concurrent).ok


def test_first_violating_key_in_key_order_is_reported() -> None:
    history = [
        put(1, 0, 1, b"a", Written(1), key="z"),
        get(1, 2, 3, None, key="z"),
        put(1, 4, 5, b"a", Written(2), key="b"),
        get(1, 6, 7, None, key="b"),
    ]
    assert check(history).key == "b"


def test_search_is_bounded() -> None:
    # Many fully concurrent writes and a read that matches none: exhaustive
    # search is exponential, so a small step bound must answer "unknown".
    history = [put(p, 0, 100, bytes([p]), Written(p + 1)) for p in range(16)]
    history.append(get(99, 0, 100, (b"nope", 1)))
    result = check(history, max_steps_per_key=200)
    assert result.outcome == "unknown" and not result.ok and result.key == "k"


def test_bad_histories_raise() -> None:
    with pytest.raises(ValueError):
        check([put(1, 5, 4, b"a", Written(1))])
    with pytest.raises(ValueError):
        check([put(1, 0, 1, b"a", None)])  # a completed write needs a result
    with pytest.raises(ValueError):
        check([Operation(1, 0, 1, "cas", "k")])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check([get(1, 0, 1, Written(1))])  # type: ignore[arg-type]


def test_recorder_turns_unanswered_writes_indeterminate() -> None:
    recorder = HistoryRecorder()
    first = recorder.call(1, 0, "put", "k", b"a")
    recorder.returned(first, 1, Written(1))
    recorder.call(2, 2, "put", "k", b"b")  # never answered
    recorder.call(3, 2, "get", "k")  # never answered: dropped
    seen = recorder.call(4, 5, "get", "k")
    recorder.returned(seen, 6, (b"b", 2))
    ops = recorder.operations()
    assert [op.kind for op in ops] == ["put", "put", "get"]
    assert ops[1].indeterminate and not ops[0].indeterminate
    assert check(ops).ok


# ---------------------------------------------------------------- properties


@st.composite
def real_histories(draw: st.DrawFn, blur: bool = True) -> list[Operation]:
    """Clients run operations one after another on the real state machine.

    With ``blur`` False the operations never overlap and every one is answered.

    Each client's operations are sequential; each takes effect at an instant
    drawn inside its interval, and the state machine applies them in the
    order of those instants.  Some writes lose their answer (indeterminate,
    yet took effect); some writes of unknown outcome never happened at all.
    Values are unique unless ``reuse`` is drawn, which reuses a few values.
    """
    sm = MetadataStateMachine()
    keys = ["a", "b"]
    reuse = draw(st.booleans())
    plans = []
    for process in range(draw(st.integers(1, 4))):
        t = draw(st.integers(0, 5))
        for n in range(draw(st.integers(0, 12))):
            duration = draw(st.integers(1, 30)) if blur else 1
            at = t + draw(st.integers(0, duration)) if blur else t
            fates = ["answered"] * 6 + ["lost answer", "never happened"]
            fate = draw(st.sampled_from(fates)) if blur else "answered"
            plans.append((at, process, n, t, t + duration, fate))
            t += duration + (draw(st.integers(0, 5)) if blur else 2)
            if fate != "answered":
                t += 1  # the client gave up at its timeout and moved on
    plans.sort()
    ops: list[Operation] = []
    for index, (_, process, n, call, ret, fate) in enumerate(plans, start=1):
        if not blur:  # strictly one after another
            call, ret = 10 * index, 10 * index + 1
        key = draw(st.sampled_from(keys))
        kind = draw(st.sampled_from(["get", "put", "put", "delete"]))
        if kind == "get":
            if fate != "answered":
                continue
            kv = sm.get(key)
            found = (kv.value, kv.version) if kv else None
            ops.append(Operation(process, call, ret, "get", key, result=found))
            continue
        current = sm.get(key)
        pre = draw(
            st.sampled_from(
                [
                    Precondition(),
                    Precondition("absent"),
                    Precondition("version", current.version if current else 0),
                    Precondition("version", 1),
                ]
            )
        )
        value = f"v{draw(st.integers(0, 2))}" if reuse else f"p{process}.{n}"
        if fate == "never happened":
            ops.append(Operation(process, call, None, kind, key, value.encode(), pre, None))
            continue
        command = Put(key, value.encode(), pre) if kind == "put" else Delete(key, pre)
        result = sm.apply_request(index, Request(index, command))
        assert isinstance(result, Written | PreconditionFailed)
        if fate == "lost answer":
            ops.append(Operation(process, call, None, kind, key, value.encode(), pre, None))  # type: ignore[arg-type]
        else:
            ops.append(Operation(process, call, ret, kind, key, value.encode(), pre, result))  # type: ignore[arg-type]
    return ops


@settings(max_examples=120, deadline=None)
@given(real_histories())
def test_histories_from_a_real_execution_are_accepted(history: list[Operation]) -> None:
    result = check(history, max_steps_per_key=100_000)
    assert result.ok, result.explanation


@settings(max_examples=60, deadline=None)
@given(real_histories(blur=False), st.data())
def test_a_corrupted_read_in_a_sequential_history_is_rejected(
    history: list[Operation], data: st.DataObject
) -> None:
    # No overlap and no unknown outcomes: every read has exactly one right answer.
    assert not any(op.indeterminate for op in history)
    reads = [i for i, op in enumerate(history) if op.kind == "get"]
    if not reads:
        return
    i = data.draw(st.sampled_from(reads))
    op = history[i]
    if op.result is None:
        wrong: GetResult = (b"never written", 1)
    else:
        assert isinstance(op.result, tuple)
        wrong = data.draw(st.sampled_from([None, (op.result[0], op.result[1] + 1)]))
    history[i] = Operation(op.process, op.call_time, op.return_time, "get", op.key, result=wrong)
    result = check(history)
    assert result.outcome == "violation" and result.key == op.key
