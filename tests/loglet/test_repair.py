"""Seal, find-tail and repair (T1-T3): the tail covers every acknowledged record, and
every record below it ends on a write quorum."""

from __future__ import annotations

from random import Random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catenary.core.loglet.repair import DONE, FinderConfig, TailFinder
from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.sequencer import Backpressure, Sequencer, SequencerConfig
from catenary.core.loglet.types import SequencerId, Store, Tail, Trim

from .nodes import LOGLET, ME, Node

pytestmark = pytest.mark.timeout(60)

REPAIRER = SequencerId(9, 1)


def finish(finder: TailFinder, nodes: dict[int, Node], down: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """Deliver the finder's requests and the answers until it is done."""
    for _ in range(1000):
        for dst, message in finder.take_messages():
            if dst not in down:
                nodes[dst].handle(REPAIRER.node, message)
        for node_id, node in sorted(nodes.items()):
            for _, reply in node.flush():
                if node_id not in down:
                    finder.on_message(node_id, reply)
            for plan in node.reads:
                if node_id not in down:
                    finder.on_message(node_id, node.answer(plan))
            node.reads = []
        if finder.done:
            for dst, message in finder.take_messages():
                if dst not in down:
                    nodes[dst].handle(REPAIRER.node, message)
            return
        finder.tick()
    raise AssertionError(f"finder stuck in {finder.phase}")


def finder(n: int = 3, r: int = 2) -> TailFinder:
    return TailFinder(
        LOGLET, range(1, n + 1), ReplicationProperty(node=r), REPAIRER, config=FinderConfig(2)
    )


def cluster(n: int) -> dict[int, Node]:
    return {i: Node(i) for i in range(1, n + 1)}


def store(node: Node, first: int, payloads: list[bytes], tail: int = 1) -> None:
    node.handle(ME.node, Store(LOGLET, ME, first, tuple(payloads), tail))
    node.flush()


def test_an_under_replicated_tail_in_the_f_majority_is_repaired_and_kept() -> None:
    nodes = cluster(3)
    for node in nodes.values():
        store(node, 1, [b"a", b"b"])
    store(nodes[1], 3, [b"c"], tail=3)  # only node 1 holds offset 3: never acknowledged
    f = finder()
    finish(f, nodes, down={3})  # node 3 is down: F = {1, 2}
    assert f.phase == DONE and f.tail == 4 and f.lost == []
    assert f.repaired_records == 1
    assert nodes[2].held() == {1: b"a", 2: b"b", 3: b"c"}  # copied to a write quorum
    assert all(node.core.state(LOGLET).sealed for node in (nodes[1], nodes[2]))  # type: ignore[union-attr]


def test_a_record_held_outside_the_f_majority_is_not_in_the_tail() -> None:
    nodes = cluster(3)
    for node in nodes.values():
        store(node, 1, [b"a"])
    store(nodes[3], 2, [b"x"], tail=2)
    f = finder()
    finish(f, nodes, down={3})
    assert f.tail == 2 and f.repaired_records == 0


def test_trimmed_offsets_are_not_repaired_and_the_tail_is_released() -> None:
    nodes = cluster(3)
    store(nodes[1], 1, [b"a", b"b", b"c", b"d"], tail=1)
    store(nodes[2], 1, [b"a", b"b"], tail=1)
    nodes[1].handle(ME.node, Tail(LOGLET, 3))
    nodes[1].handle(9, Trim(LOGLET, 2))
    nodes[1].flush()
    f = finder()
    finish(f, nodes)
    assert f.tail == 5 and f.lost == []
    assert set(nodes[2].held()) >= {3, 4}  # 3-4 repaired; 1-2 trimmed on node 1, not copied
    assert nodes[3].held().keys() in ({3, 4}, set())
    assert all(n.core.state(LOGLET).known_global_tail == 5 for n in nodes.values())  # type: ignore[union-attr]


def test_a_record_nobody_in_the_f_majority_holds_is_reported_lost() -> None:
    nodes = cluster(3)
    store(nodes[1], 1, [b"a", b"b"])
    store(nodes[2], 2, [b"b"], tail=2)  # node 2 accepted above a gap it was told committed
    nodes[1].durable = []  # node 1's disk wiped
    nodes[1].crash()
    f = finder()
    finish(f, nodes, down={3})
    assert f.tail == 3 and f.lost == [(1, 2)]


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([(3, 2), (5, 2), (5, 3), (4, 2)]))
def test_after_any_schedule_the_found_tail_covers_every_ack_and_is_replicated(
    seed: int, shape: tuple[int, int]
) -> None:
    n, r = shape
    rng = Random(seed)
    seq = Sequencer(
        LOGLET,
        ME,
        range(1, n + 1),
        ReplicationProperty(node=r),
        config=SequencerConfig(records_inflight_max=6, store_timeout_ticks=3),
    )
    nodes = cluster(n)
    net: list[tuple[int, int, msgspec.Struct]] = []
    sent: dict[int, bytes] = {}
    acked = 0
    for step in range(rng.randint(0, 250)):
        action = rng.random()
        if action < 0.3:
            payloads = [b"s%d-%d" % (step, i) for i in range(rng.randint(1, 3))]
            try:
                last = seq.append(payloads, step)
            except Backpressure:
                pass
            else:
                for i, payload in enumerate(payloads):
                    sent[last - len(payloads) + 1 + i] = payload
        elif action < 0.6 and net:
            src, dst, message = net.pop(rng.randrange(len(net)))
            if rng.random() < 0.1:
                continue
            if dst == 0:
                seq.on_stored(src, message)  # type: ignore[arg-type]
            else:
                nodes[dst].handle(src, message)
        elif action < 0.85:
            node_id = rng.randint(1, n)
            net += [(node_id, 0, reply) for _, reply in nodes[node_id].flush()]
        elif action < 0.88:
            nodes[rng.randint(1, n)].crash()
        else:
            seq.tick()
        net += [(ME.node, dst, m) for dst, m in seq.take_messages()]
        for _, last in seq.take_outcomes()[0]:
            acked = max(acked, last)
    # Seal and find the tail while the sequencer's old stores may still arrive later.
    down = set(rng.sample(range(1, n + 1), r - 1))  # up to r - 1 servers unreachable
    f = TailFinder(
        LOGLET, range(1, n + 1), ReplicationProperty(node=r), REPAIRER, config=FinderConfig(2)
    )
    finish(f, nodes, down=down)
    assert f.tail is not None and f.tail > acked, (f.tail, acked)
    assert f.lost == []
    for offset in range(1, f.tail):
        holders = {i for i, node in nodes.items() if node.held().get(offset) == sent[offset]}
        assert seq.checker.is_write_quorum(holders), (offset, holders, f.tail)
    # Late stores of the old sequencer change nothing below the tail and ack nothing new.
    for src, dst, message in net:
        if dst != 0 and dst not in down:
            nodes[dst].handle(src, message)
    for node_id, node in nodes.items():
        for _, reply in node.flush():
            seq.on_stored(node_id, reply)  # type: ignore[arg-type]
    for _, last in seq.take_outcomes()[0]:
        assert last < f.tail, "an append acknowledged beyond the sealed tail"
