"""The sequencer and log-server cores, rule by rule, and under random schedules."""

from __future__ import annotations

from random import Random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catenary.core.loglet.log_server import PutRecords, PutSeal, PutSequencer
from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.sequencer import (
    Backpressure,
    LogletSealed,
    RecordTooLarge,
    Sequencer,
    SequencerConfig,
)
from catenary.core.loglet.types import (
    MALFORMED,
    OK,
    OUT_OF_ORDER,
    SEALED,
    WRONG_SEQUENCER,
    Gap,
    GetDigest,
    GetLogletInfo,
    GetRecords,
    LogletInfo,
    Seal,
    Sealed,
    SequencerId,
    Store,
    Stored,
    Tail,
    Trim,
    Trimmed,
)

from .nodes import LOGLET, ME, Node

pytestmark = pytest.mark.timeout(60)


def sequencer(n: int = 3, r: int = 2, **config: int) -> Sequencer:
    return Sequencer(
        LOGLET, ME, range(1, n + 1), ReplicationProperty(node=r), config=SequencerConfig(**config)
    )


def run(seq: Sequencer, nodes: dict[int, Node], down: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """Deliver everything until quiet; nodes in ``down`` lose what is sent to them."""
    for _ in range(100):
        moved = False
        for dst, message in seq.take_messages():
            moved = True
            if dst not in down:
                nodes[dst].handle(ME.node, message)
        for node_id, node in sorted(nodes.items()):
            for _, reply in node.flush():
                moved = True
                if node_id not in down:
                    assert isinstance(reply, Stored)
                    seq.on_stored(node_id, reply)
        if not moved:
            return
    raise AssertionError("did not settle")


def cluster(n: int = 3) -> dict[int, Node]:
    return {i: Node(i) for i in range(1, n + 1)}


def test_offsets_are_contiguous_and_acks_come_in_order_at_a_write_quorum() -> None:
    seq, nodes = sequencer(), cluster()
    assert seq.append([b"a", b"b"], token=1) == 2
    assert seq.append([b"c"], token=2) == 3
    # Only node 3 answers at first: one copy is not a write quorum of {node: 2}.
    for dst, message in seq.take_messages():
        nodes[dst].handle(ME.node, message)
    for _, reply in nodes[3].flush():
        seq.on_stored(3, reply)  # type: ignore[arg-type]
    assert seq.take_outcomes() == ([], []) and seq.global_tail == 1
    for _, reply in nodes[1].flush():
        seq.on_stored(1, reply)  # type: ignore[arg-type]
    assert seq.take_outcomes() == ([(1, 2), (2, 3)], [])
    assert seq.global_tail == 4 and seq.inflight_records == 0


def test_appends_go_on_with_one_server_of_three_down() -> None:
    seq, nodes = sequencer(), cluster()
    for token in range(5):
        seq.append([b"x%d" % token], token)
        run(seq, nodes, down={2})
    acks, failures = seq.take_outcomes()
    assert [t for t, _ in acks] == list(range(5)) and not failures
    for node_id in (1, 3):
        assert nodes[node_id].held() == {i + 1: b"x%d" % i for i in range(5)}


def test_a_store_reply_is_sent_only_after_what_it_reports_is_durable() -> None:
    node = Node(1)
    node.handle(ME.node, Store(LOGLET, ME, 1, (b"a",), 1))
    assert node.durable == []
    assert node.replies and node.pending  # the reply waits for the write
    assert node.flush() == [(ME.node, Stored(LOGLET, 1, OK, 2))]
    assert node.durable == [PutSequencer(LOGLET, ME), PutRecords(LOGLET, 1, (b"a",))]


def test_log_server_accepts_in_order_only_unless_the_gap_is_committed() -> None:
    node = Node(1)
    node.handle(ME.node, Store(LOGLET, ME, 3, (b"c",), 1))
    assert node.flush()[-1][1] == Stored(LOGLET, 3, OUT_OF_ORDER, 1)
    # Offsets 1-2 committed elsewhere: the store above the gap is accepted.
    node.handle(ME.node, Store(LOGLET, ME, 3, (b"c",), 3))
    assert node.flush()[-1][1] == Stored(LOGLET, 3, OK, 4)
    plan = node.core.handle(9, GetRecords(LOGLET, 1, 10, 1 << 20, 4)).reads[0]
    assert plan.runs == (Gap(1, 3, "absent"), (3, 4))


def test_log_server_is_pinned_to_the_first_sequencer_and_never_overwrites() -> None:
    node = Node(1)
    node.handle(ME.node, Store(LOGLET, ME, 1, (b"a", b"b"), 1))
    other = SequencerId(2, 1)
    node.handle(2, Store(LOGLET, other, 3, (b"c",), 1))
    node.handle(ME.node, Store(LOGLET, ME, 2, (b"B", b"c"), 1))  # overlaps offset 2
    replies = [reply for _, reply in node.flush()]
    assert [r.status for r in replies] == [OK, WRONG_SEQUENCER, OK]  # type: ignore[attr-defined]
    assert node.held() == {1: b"a", 2: b"b", 3: b"c"}


def test_seal_is_durable_before_it_is_answered_and_refuses_later_stores() -> None:
    node = Node(1)
    node.handle(ME.node, Store(LOGLET, ME, 1, (b"a",), 1))
    node.handle(5, Seal(LOGLET))
    assert node.replies and PutSeal(LOGLET) in node.pending
    assert node.flush()[-1] == (5, Sealed(LOGLET, 2))
    node.crash()
    node.handle(ME.node, Store(LOGLET, ME, 2, (b"b",), 1))
    assert node.flush() == [(ME.node, Stored(LOGLET, 2, SEALED, 2))]
    # A repair store is still accepted after the seal (and pins nothing).
    node.handle(5, Store(LOGLET, SequencerId(5, 1), 2, (b"b",), 1, repair=True))
    assert node.flush() == [(5, Stored(LOGLET, 2, OK, 3))]


def test_malformed_stores_are_refused() -> None:
    node = Node(1)
    node.handle(ME.node, Store(LOGLET, ME, 0, (b"a",), 1))
    node.handle(ME.node, Store(LOGLET, ME, 1, (), 1))
    assert [r.status for _, r in node.flush()] == [MALFORMED, MALFORMED]  # type: ignore[attr-defined]
    assert node.durable == []


def test_trim_is_clipped_to_the_global_tail_and_reads_show_trim_gaps() -> None:
    node = Node(1)
    node.handle(ME.node, Store(LOGLET, ME, 1, (b"a", b"b", b"c", b"d"), 1))
    node.handle(9, Trim(LOGLET, 10))  # nothing is known committed yet: clipped to 0
    assert node.flush()[-1] == (9, Trimmed(LOGLET, 0))
    node.handle(ME.node, Tail(LOGLET, 4))  # offsets 1-3 committed
    node.handle(9, Trim(LOGLET, 10))
    assert node.flush()[-1] == (9, Trimmed(LOGLET, 3))
    node.handle(9, Trim(LOGLET, 1))  # never goes back
    assert node.flush()[-1] == (9, Trimmed(LOGLET, 3))
    plan = node.core.handle(9, GetRecords(LOGLET, 1, 100, 1 << 20, 0)).reads[0]
    # Never at or past the global tail (4), even though offset 4 is held.
    assert plan.runs == (Gap(1, 4, "trim"),) and plan.end_offset == 4
    node.crash()
    info = node.core.handle(9, GetLogletInfo(LOGLET)).after_persist[0][1]
    assert isinstance(info, LogletInfo) and info.trim_point == 3 and info.local_tail == 5


def test_reads_stop_at_the_local_tail_and_digest_lists_what_is_held() -> None:
    node = Node(1)
    node.handle(ME.node, Store(LOGLET, ME, 1, (b"a", b"b"), 1))
    node.handle(ME.node, Store(LOGLET, ME, 5, (b"e",), 5))
    node.flush()
    plan = node.core.handle(9, GetRecords(LOGLET, 1, 100, 1 << 20, 9)).reads[0]
    assert plan.runs == ((1, 3), Gap(3, 5, "absent"), (5, 6)) and plan.end_offset == 6
    digest = node.core.handle(9, GetDigest(LOGLET, 2, 9)).after_persist[0][1]
    assert digest.held == ((2, 3), (5, 6))  # type: ignore[attr-defined]


def test_too_large_and_backpressure_are_refused_up_front() -> None:
    seq = sequencer(records_inflight_max=3, record_bytes_max=4)
    with pytest.raises(RecordTooLarge, match="5 bytes exceeds the limit of 4"):
        seq.append([b"12345"], 1)
    seq.append([b"a", b"b"], 1)
    with pytest.raises(Backpressure):
        seq.append([b"c", b"d"], 2)
    assert seq.next_offset == 3  # the refused batches took no offsets


def test_an_f_majority_of_sealed_answers_fails_pending_appends() -> None:
    seq, nodes = sequencer(), cluster()  # n=3, r=2: f-majority is 2
    for node in nodes.values():
        node.handle(9, Seal(LOGLET))
        node.flush()
    seq.append([b"a"], 1)
    for dst, message in seq.take_messages():
        nodes[dst].handle(ME.node, message)
    seq.on_stored(1, nodes[1].flush()[0][1])  # type: ignore[arg-type]
    assert not seq.stopped  # one sealed answer is not an f-majority
    seq.on_stored(2, nodes[2].flush()[0][1])  # type: ignore[arg-type]
    acks, failures = seq.take_outcomes()
    assert acks == [] and [t for t, _ in failures] == [1]
    assert isinstance(failures[0][1], LogletSealed)
    with pytest.raises(LogletSealed):
        seq.append([b"b"], 2)


def test_a_silent_server_is_skipped_by_the_next_wave() -> None:
    seq, nodes = sequencer(n=5, r=2, store_timeout_ticks=3), cluster(5)
    seq.append([b"a"], 1)
    first_wave = {dst for dst, _ in seq.take_messages()}
    assert first_wave == {1, 2, 3, 4, 5}
    for _ in range(3):
        seq.tick()
    # Nobody answered: with every server silent no write quorum is left, so all are asked.
    assert {dst for dst, _ in seq.take_messages()} == {1, 2, 3, 4, 5}
    for node_id in (1, 2, 3):
        nodes[node_id].handle(ME.node, Store(LOGLET, ME, 1, (b"a",), 1))
    seq.on_stored(1, nodes[1].flush()[-1][1])  # type: ignore[arg-type]
    for _ in range(3):
        seq.tick()
    # 1 answered; 2-5 did not: the next wave skips them... but {1} alone is no write
    # quorum among the rest, so everyone who has not stored it is asked again.
    assert {dst for dst, _ in seq.take_messages()} == {2, 3, 4, 5}
    seq.on_stored(2, nodes[2].flush()[-1][1])  # type: ignore[arg-type]
    assert seq.take_outcomes()[0] == [(1, 1)]


def test_the_global_tail_is_released_when_idle() -> None:
    seq, nodes = sequencer(tail_release_ticks=1), cluster()
    seq.append([b"a"], 1)
    run(seq, nodes)
    seq.tick()
    tails = [(dst, m) for dst, m in seq.take_messages() if isinstance(m, Tail)]
    assert sorted(dst for dst, _ in tails) == [1, 2, 3]
    assert all(m.global_tail == 2 for _, m in tails)  # type: ignore[attr-defined]
    seq.tick()
    assert seq.take_messages() == []  # told once


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([(3, 2), (5, 2), (5, 3), (4, 3), (1, 1)]))
def test_random_schedules_never_ack_what_a_write_quorum_does_not_hold(
    seed: int, shape: tuple[int, int]
) -> None:
    n, r = shape
    rng = Random(seed)
    seq = sequencer(n=n, r=r, records_inflight_max=8, store_timeout_ticks=4)
    nodes = cluster(n)
    net: list[tuple[int, int, msgspec.Struct]] = []  # (src, dst, message)
    acked: dict[int, bytes] = {}
    sent: dict[int, bytes] = {}
    last_ack = 0
    token = 0
    for _ in range(300):
        action = rng.random()
        if action < 0.25:
            token += 1
            payloads = [b"t%d-%d" % (token, i) for i in range(rng.randint(1, 3))]
            try:
                last = seq.append(payloads, token)
            except Backpressure:
                pass
            else:
                for i, payload in enumerate(payloads):
                    sent[last - len(payloads) + 1 + i] = payload
        elif action < 0.55 and net:
            src, dst, message = net.pop(rng.randrange(len(net)))  # any order
            if rng.random() < 0.1:
                continue  # lost
            if dst == 0:
                seq.on_stored(src, message)  # type: ignore[arg-type]
            else:
                nodes[dst].handle(src, message)
        elif action < 0.8:
            node_id = rng.randint(1, n)
            for _, reply in nodes[node_id].flush():
                net.append((node_id, 0, reply))
        elif action < 0.83:
            nodes[rng.randint(1, n)].crash()
        else:
            seq.tick()
        for dst, message in seq.take_messages():
            net.append((ME.node, dst, message))
        acks, failures = seq.take_outcomes()
        assert not failures
        for _, last in acks:
            assert last > last_ack  # in order
            last_ack = last
            for offset in range(1, last + 1):
                acked[offset] = sent[offset]
        # Every acknowledged record is durable on a write quorum, with its payload.
        for offset, payload in acked.items():
            holders = {i for i, node in nodes.items() if node.held().get(offset) == payload}
            assert seq.checker.is_write_quorum(holders), (offset, holders)
        # No offset with two payloads anywhere.
        for node in nodes.values():
            for offset, payload in node.held().items():
                assert sent[offset] == payload
