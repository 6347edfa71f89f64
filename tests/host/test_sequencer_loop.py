"""SequencerLoop: queued back-pressure, deadlines, completions exactly once (Q1-Q5)."""

from __future__ import annotations

from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.sequencer import Backpressure, LogletSealed, SequencerConfig
from catenary.core.loglet.types import OK, SEALED, SequencerId, Store, Stored
from catenary.host.sequencer import AppendTimeout, NotSequencer, SequencerLoop

R2 = ReplicationProperty(node=2)
ME = SequencerId(1, 1)


def loop(inflight: int = 100, queue_max: int = 8) -> SequencerLoop:
    q = SequencerLoop(1, queue_max=queue_max, config=SequencerConfig(records_inflight_max=inflight))
    assert q.start(7, ME, (1, 2, 3), R2)
    return q


def ack(q: SequencerLoop, first: int, local_tail: int, now: int = 0) -> None:
    for node in (1, 2):
        q.on_stored(node, Stored(7, first, OK, local_tail), now)


def test_append_stores_and_acks_in_order() -> None:
    q = loop()
    q.append(7, [b"a"], 10, 1000, 0)
    q.append(7, [b"b", b"c"], 11, 1000, 0)
    out = q.take()
    stores = [m for _, m in out.messages if isinstance(m, Store)]
    assert {(s.first_offset, s.payloads) for s in stores} == {(1, (b"a",)), (2, (b"b", b"c"))}
    ack(q, 1, 2)
    ack(q, 2, 4)
    out = q.take()
    assert out.acked == [(10, 7, 1), (11, 7, 3)]
    assert out.failed == []


def test_backpressure_queues_then_sends_when_room_frees() -> None:
    q = loop(inflight=1)
    q.append(7, [b"a"], 1, 1000, 0)
    q.append(7, [b"b"], 2, 1000, 0)  # refused by the core: queued, not failed
    out = q.take()
    assert out.failed == []
    assert [m.first_offset for _, m in out.messages if isinstance(m, Store)] == [1, 1, 1]
    ack(q, 1, 2)
    out = q.take()
    assert out.acked == [(1, 7, 1)]
    assert {m.first_offset for _, m in out.messages if isinstance(m, Store)} == {2}
    ack(q, 2, 3)
    assert q.take().acked == [(2, 7, 2)]


def test_queue_full_fails_with_backpressure() -> None:
    q = loop(inflight=1, queue_max=1)
    q.append(7, [b"a"], 1, 1000, 0)
    q.append(7, [b"b"], 2, 1000, 0)
    q.append(7, [b"c"], 3, 1000, 0)
    failed = q.take().failed
    assert [t for t, _ in failed] == [3] and isinstance(failed[0][1], Backpressure)
    assert failed[0][1].retryable


def test_deadlines_fail_queued_and_inflight_once() -> None:
    q = loop(inflight=1)
    q.append(7, [b"a"], 1, 100, 0)
    q.append(7, [b"b"], 2, 50, 0)
    q.take()
    q.tick(60)
    out = q.take()
    assert [t for t, _ in out.failed] == [2] and isinstance(out.failed[0][1], AppendTimeout)
    q.tick(100)
    out = q.take()
    assert [t for t, _ in out.failed] == [1] and out.failed[0][1].retryable
    ack(q, 1, 2, 120)  # a late acknowledgement of a timed-out append is dropped
    out = q.take()
    assert out.acked == [] and out.failed == []
    q.append(7, [b"c"], 3, 0, 10)  # already past its deadline
    assert [t for t, _ in q.take().failed] == [3]


def test_sealed_fails_inflight_and_queued_and_unhosts() -> None:
    q = loop(inflight=1)
    q.append(7, [b"a"], 1, 1000, 0)
    q.append(7, [b"b"], 2, 1000, 0)
    for node in (2, 3):
        q.on_stored(node, Stored(7, 1, SEALED, 1), 5)
    out = q.take()
    assert sorted(t for t, _ in out.failed) == [1, 2]
    assert all(isinstance(e, LogletSealed) for _, e in out.failed)
    assert not q.hosts(7)
    q.append(7, [b"c"], 3, 1000, 6)
    failed = q.take().failed
    assert isinstance(failed[0][1], NotSequencer)
    # A loglet is never started twice on one loop (its offsets would be reused).
    assert not q.start(7, ME, (1, 2, 3), R2)


def test_tail_release_when_idle() -> None:
    q = SequencerLoop(1, config=SequencerConfig(tail_release_ticks=1))
    q.start(7, ME, (1, 2, 3), R2)
    q.append(7, [b"a"], 1, 1000, 0)
    ack(q, 1, 2)
    q.take()
    q.tick(10)
    tails = [(dst, m) for dst, m in q.take().messages if type(m).__name__ == "Tail"]
    assert sorted(dst for dst, _ in tails) == [1, 2, 3]
