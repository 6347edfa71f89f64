"""The sans-IO membership rules (``catenary.core.membership``), one test per rule."""

from __future__ import annotations

from catenary.core.membership import (
    Promotion,
    Registration,
    join_refusal,
    reusable_node_id,
    transfer_target,
)

A = ("10.0.0.2:5122", "10.0.0.2:5123")


def reg(node: int, addresses: tuple[str, str] = A, **kw: object) -> Registration:
    return Registration(node, addresses[0], addresses[1], **kw)  # type: ignore[arg-type]


def reuse(records: list[Registration], **kw: object) -> int | None:
    args: dict[str, object] = {"voters": (1,), "learners": (), "matches": {}}
    args.update(kw)
    return reusable_node_id(
        records,
        peer_address=A[0],
        client_address=A[1],
        **args,  # type: ignore[arg-type]
    )


def test_rule1_an_id_that_never_held_data_goes_back_to_the_same_addresses() -> None:
    # Registered, added as a learner, never matched anything: the reply was lost.
    assert reuse([reg(1, ("a:1", "a:2")), reg(2)], learners=(2,), matches={2: 0}) == 2
    # Registered but not yet a member at all: the same.
    assert reuse([reg(3), reg(2)]) == 2


def test_rule1_an_id_that_held_data_is_never_reused() -> None:
    assert reuse([reg(2)], learners=(2,), matches={2: 5}) is None
    assert reuse([reg(2)], voters=(1, 2)) is None
    assert reuse([reg(2, removed=True)]) is None
    assert reuse([reg(2, ("b:1", "b:2"))]) is None
    assert reuse([reg(2, (A[0], "other:1"))]) is None


def test_rule2_refusals() -> None:
    assert join_refusal(4, None, asked_node=0, generation=1) is None
    missing = join_refusal(4, None, asked_node=4, generation=2)
    assert missing is not None and missing.kind == "not_found"
    removed = join_refusal(4, reg(4, removed=True), asked_node=4, generation=2)
    assert removed is not None and removed.kind == "removed"
    stale = join_refusal(4, reg(4, generation=5), asked_node=4, generation=3)
    assert stale is not None and stale.kind == "stale"
    assert "older than the recorded 5" in stale.message
    assert join_refusal(4, reg(4, generation=5), asked_node=4, generation=5) is None
    assert join_refusal(4, reg(4, generation=5), asked_node=4, generation=0) is None


def test_rule3_promote_once_within_the_lag_bound() -> None:
    promotion = Promotion(lag_max=64)
    assert promotion.check([2], {2: 0}, last_index=10) is None  # matched nothing yet
    promotion.marks.clear()
    assert promotion.check([2], {2: 5}, last_index=200) is None  # 195 behind
    assert promotion.check([2], {2: 150}, last_index=400) is None  # behind, short of the mark
    assert promotion.check([2], {2: 350}, last_index=410) == 2  # within 64


def test_rule3_under_steady_load_passing_the_previous_mark_is_enough() -> None:
    promotion = Promotion(lag_max=0)
    assert promotion.check([2], {2: 50}, last_index=100) is None
    # The leader moved on to 200, but the learner passed where it stood before.
    assert promotion.check([2], {2: 101}, last_index=200) == 2


def test_rule3_one_change_at_a_time_lowest_id_first() -> None:
    promotion = Promotion(lag_max=10)
    assert promotion.check([5, 3], {3: 100, 5: 100}, last_index=100) == 3
    assert promotion.marks == {3: 100, 5: 100}


def test_rule4_transfer_to_the_most_caught_up_voter() -> None:
    assert transfer_target((1,), 1, {}) is None
    assert transfer_target((1, 2, 3), 1, {2: 5, 3: 9}) == 3
    assert transfer_target((1, 2, 3), 1, {2: 9, 3: 9}) == 2  # ties: lowest id
    assert transfer_target((1, 2, 3), 1, {}) == 2
