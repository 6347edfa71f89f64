"""The leader-side lease clock."""

from __future__ import annotations

import pytest

from catenary.core.metadata.lessor import Lessor, LessorConfig
from catenary.core.metadata.state import MetadataStateMachine
from catenary.core.metadata.types import (
    Command,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseKeepAlive,
    LeaseRevoke,
    Put,
    Request,
    Result,
    encode_request,
)


class Member:
    """A state machine plus a lessor, fed the same way a replica would."""

    def __init__(self, config: LessorConfig | None = None) -> None:
        self.sm = MetadataStateMachine()
        self.lessor = Lessor(config)
        self.index = 0

    def apply(self, command: Command, now_ms: int) -> Result:
        self.index += 1
        _, result = self.sm.apply(self.index, encode_request(Request(1, command)))
        self.lessor.observe(self.index, self.sm.last_command, result, now_ms)
        return result

    def promote(self, now_ms: int) -> None:
        self.lessor.become_leader(self.sm, now_ms)


def test_follower_lessor_proposes_nothing() -> None:
    m = Member()
    m.apply(LeaseGrant(100), now_ms=0)
    assert not m.lessor.is_leader
    assert m.lessor.expired(10_000) is None
    assert m.lessor.checkpoint(10_000) is None


def test_grant_and_keepalive_set_deadline_now_plus_ttl() -> None:
    m = Member()
    m.promote(0)
    assert m.apply(LeaseGrant(100), now_ms=50) == LeaseGranted(1, 100)
    assert m.lessor.deadline_ms(1) == 150
    assert m.lessor.expired(149) is None
    m.apply(LeaseKeepAlive(1), now_ms=140)
    assert m.lessor.deadline_ms(1) == 240
    assert m.lessor.expired(239) is None
    expire = m.lessor.expired(240)
    assert expire == LeaseExpire((1,), applied_index=2)
    m.apply(expire, now_ms=241)
    assert m.sm.lease(1) is None
    assert m.lessor.deadline_ms(1) is None


def test_new_leader_resumes_from_checkpoint_not_full_ttl() -> None:
    old = Member(LessorConfig(checkpoint_interval_ms=100))
    new = Member()
    old.promote(0)

    def both(command: Command, now_ms: int) -> None:
        old.apply(command, now_ms)
        new.apply(command, now_ms)

    both(LeaseGrant(1000), now_ms=0)
    assert old.lessor.checkpoint(99) is None  # not due yet
    checkpoint = old.lessor.checkpoint(300)
    assert checkpoint == LeaseCheckpoint(((1, 700),), applied_index=1)
    both(checkpoint, now_ms=300)
    old.lessor.step_down()
    assert old.lessor.expired(5000) is None
    new.promote(10_000)
    assert new.lessor.deadline_ms(1) == 10_700


def test_expiry_is_not_reproposed_until_retry_and_spares_raced_keepalive() -> None:
    m = Member(LessorConfig(expire_retry_ms=50))
    m.promote(0)
    m.apply(LeaseGrant(10), now_ms=0)
    m.apply(Put("k", b"v", lease=1), now_ms=0)
    expire = m.lessor.expired(10)
    assert expire is not None and expire.leases == (1,)
    assert m.lessor.expired(20) is None  # in flight
    assert m.lessor.expired(60) == expire  # retried
    # a keep-alive applied before the expiry wins
    m.apply(LeaseKeepAlive(1), now_ms=61)
    m.apply(expire, now_ms=62)
    assert m.sm.lease(1) is not None and m.sm.get("k") is not None
    assert m.lessor.deadline_ms(1) == 71
    assert m.lessor.expired(70) is None


def test_revoke_forgets_lease() -> None:
    m = Member()
    m.promote(0)
    m.apply(LeaseGrant(10), now_ms=0)
    m.apply(LeaseRevoke(1), now_ms=1)
    assert m.lessor.deadline_ms(1) is None
    assert m.lessor.expired(100) is None


def test_batches_are_bounded_and_in_id_order() -> None:
    m = Member(LessorConfig(expire_batch_max=2, checkpoint_batch_max=2, checkpoint_interval_ms=10))
    m.promote(0)
    for _ in range(5):
        m.apply(LeaseGrant(100), now_ms=0)
    first = m.lessor.checkpoint(10)
    second = m.lessor.checkpoint(10)
    third = m.lessor.checkpoint(10)
    assert [c.remaining_ms if c else None for c in (first, second, third)] == [
        ((1, 90), (2, 90)),
        ((3, 90), (4, 90)),
        ((5, 90),),
    ]
    assert m.lessor.checkpoint(19) is None  # the round is done; next one in an interval
    assert m.lessor.checkpoint(20) is not None
    first_expire = m.lessor.expired(100)
    second_expire = m.lessor.expired(100)
    third_expire = m.lessor.expired(100)
    assert [e.leases if e else None for e in (first_expire, second_expire, third_expire)] == [
        (1, 2),
        (3, 4),
        (5,),
    ]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        LessorConfig(checkpoint_interval_ms=0)
    with pytest.raises(ValueError):
        LessorConfig(expire_batch_max=0)


def test_a_checkpoint_measured_before_a_keep_alive_does_not_undo_it() -> None:
    # The leader measures the remaining time, then a keep-alive that was in flight
    # is applied, then the checkpoint (proposed after it) is applied: a new leader
    # must resume from the keep-alive's fresh TTL, not the older measurement.
    old = Member(LessorConfig(checkpoint_interval_ms=100))
    new = Member()
    old.promote(0)

    def both(command: Command, now_ms: int) -> None:
        old.apply(command, now_ms)
        new.apply(command, now_ms)

    both(LeaseGrant(1000), now_ms=0)
    checkpoint = old.lessor.checkpoint(900)
    assert checkpoint == LeaseCheckpoint(((1, 100),), applied_index=1)
    both(LeaseKeepAlive(1), now_ms=950)
    both(checkpoint, now_ms=960)
    old.lessor.step_down()
    new.promote(2000)
    # Resumed from the keep-alive (1000 ms left), not from the 100 ms measured before it.
    assert new.lessor.deadline_ms(1) == 3000
    assert new.lessor.expired(2999) is None


def test_a_lagging_new_leader_tightens_its_leases_with_the_checkpoints_it_applies_later() -> None:
    # A new leader whose applied state lags (it restarted just before winning) resumes
    # a lease from the old checkpoint it has; the newer checkpoint it applies after
    # becoming leader must bring the deadline back to what that checkpoint allows.
    old = Member(LessorConfig(checkpoint_interval_ms=100))
    new = Member()
    old.promote(0)
    grant = LeaseGrant(3000)
    old.apply(grant, now_ms=0)
    new.apply(grant, now_ms=0)
    first = old.lessor.checkpoint(100)
    assert first == LeaseCheckpoint(((1, 2900),), applied_index=1)
    old.apply(first, now_ms=100)
    new.apply(first, now_ms=100)
    later = old.lessor.checkpoint(2000)
    assert later == LeaseCheckpoint(((1, 1000),), applied_index=2)
    old.apply(later, now_ms=2000)
    old.lessor.step_down()
    new.promote(2100)  # has applied only the first checkpoint
    assert new.lessor.deadline_ms(1) == 2100 + 2900
    new.apply(later, now_ms=2150)  # the newer checkpoint reaches it as leader
    assert new.lessor.deadline_ms(1) == 2150 + 1000
    # Never longer than before, and a checkpoint older than a refresh changes nothing.
    new.apply(LeaseKeepAlive(1), now_ms=2200)
    assert new.lessor.deadline_ms(1) == 2200 + 3000
    new.apply(LeaseCheckpoint(((1, 10),), applied_index=2), now_ms=2300)
    assert new.lessor.deadline_ms(1) == 2200 + 3000
