"""The read stream's rules (R1-R8), driven by hand against scripted log-server answers."""

from __future__ import annotations

from random import Random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catenary.core.bifrost.chain import MEMORY, REPLICATED, Chain, ReplicatedParams, Segment, extend
from catenary.core.bifrost.memory import MemoryLoglet
from catenary.core.bifrost.read_stream import (
    DataLoss,
    ReadConfig,
    ReadStream,
    Record,
    TrimGap,
)
from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.types import (
    Gap,
    GetRecords,
    LogletInfo,
    Records,
    SequencerId,
    WaitForTail,
    loglet_id,
)

pytestmark = pytest.mark.timeout(60)

LOG = 3
PARAMS = ReplicatedParams(SequencerId(9, 1), (1, 2, 3), ReplicationProperty(node=2))
L0 = loglet_id(LOG, 0)


def chain() -> Chain:
    return Chain(LOG, (Segment(0, 1, REPLICATED, PARAMS),))


def stream(
    c: Chain | None = None, from_lsn: int = 1, to_lsn: int | None = None, **kw: int
) -> ReadStream:
    config = ReadConfig(**{"buffer_max": 100, "wait_ticks": 5, "resend_ticks": 3, **kw})
    return ReadStream(c or chain(), from_lsn, to_lsn, config=config)


def one(s: ReadStream) -> tuple[int, msgspec.Struct]:
    messages = s.take_messages()
    assert len(messages) == 1, messages
    return messages[0]


def records(
    first: int, payloads: list[bytes], tail: int, *, sealed: bool = False, loglet: int = L0
) -> Records:
    return Records(loglet, first, (tuple(payloads),), first + len(payloads), tail, sealed)


def info(tail: int, *, sealed: bool = False) -> LogletInfo:
    return LogletInfo(L0, tail, tail, sealed, 0)


def test_an_open_segment_is_read_up_to_the_learned_tail_rotating_over_the_nodeset() -> None:
    s = stream()
    node, request = one(s)
    assert request == WaitForTail(L0, 1)  # nothing known yet: wait for a tail
    s.on_message(node, info(4))
    node, request = one(s)
    assert isinstance(request, GetRecords) and (request.from_offset, request.to_offset) == (1, 4)
    assert request.known_global_tail == 4
    s.on_message(node, records(1, [b"a"], 4))  # the budget cut it after one record
    node2, request = one(s)
    assert node2 != node and request.from_offset == 2  # R5: the next read goes elsewhere
    s.on_message(node2, records(2, [b"b", b"c"], 4))
    assert s.take() == [Record(1, b"a"), Record(2, b"b"), Record(3, b"c")]
    node3, request = one(s)
    assert request == WaitForTail(L0, 4)  # caught up: wait for more
    for _ in range(4):
        s.tick()
    assert s.take_messages() == []  # a wait is patient...
    s.tick()
    node4, again = one(s)
    assert again == request and node4 != node3  # ...then waits on another server
    assert {node, node2, node3} == {1, 2, 3}


def test_an_answer_is_clipped_to_the_tail_whatever_the_server_sent() -> None:
    s = stream()
    node, _ = one(s)
    s.on_message(node, info(3))
    node, _ = one(s)
    s.on_message(node, records(1, [b"a", b"b", b"c", b"d"], 3))  # 3 and 4 are at/past the tail
    assert s.take() == [Record(1, b"a"), Record(2, b"b")]


def test_a_sealed_servers_tail_is_not_trusted_and_the_stream_asks_for_the_chain() -> None:
    s = stream()
    node, _ = one(s)
    s.on_message(node, info(2))
    node, _ = one(s)
    # A sealed server's tail may come from a finder that lost the compare-and-set.
    s.on_message(node, records(1, [b"a", b"b", b"c"], 9, sealed=True))
    assert s.take() == [Record(1, b"a")]
    assert s.need_chain and s.take_messages() == []
    moved = extend(chain(), 0, 3, MEMORY)  # the chain records tail 3: LSNs 1-2
    s.on_chain(moved)
    assert not s.need_chain
    node, request = one(s)
    assert isinstance(request, GetRecords) and (request.from_offset, request.to_offset) == (2, 3)
    assert request.known_global_tail == 3  # the recorded end rides as the reader's tail
    s.on_message(node, records(2, [b"b", b"c"], 9, sealed=True))
    assert s.take() == [Record(2, b"b")]
    assert s.next_lsn == 3


def test_absent_is_asked_of_every_server_before_it_is_data_loss() -> None:
    s = stream()
    node, _ = one(s)
    s.on_message(node, info(10))
    asked = []
    for end in (6, 4, 8):
        node, request = one(s)
        assert isinstance(request, GetRecords) and request.from_offset == 1
        asked.append(node)
        s.on_message(node, Records(L0, 1, (Gap(1, end, "absent"),), end, 10, False))
    assert sorted(asked) == [1, 2, 3]  # R4: each server once
    assert s.take() == [DataLoss(1, 4)]  # the shortest absent range
    node, request = one(s)
    assert isinstance(request, GetRecords) and request.from_offset == 4


def test_a_sealed_range_every_server_answers_empty_for_is_data_loss() -> None:
    s = stream(extend(chain(), 0, 4, MEMORY), 1, 4)  # segment 0 ended at offset 4
    for _ in range(3):
        node, request = one(s)
        assert isinstance(request, GetRecords) and request.known_global_tail == 4
        s.on_message(node, Records(L0, 1, (), 1, 4, True))  # local tail below: empty
    assert s.take() == [DataLoss(1, 4)] and s.finished


def test_an_absent_gap_then_a_holder_delivers_the_records() -> None:
    s = stream()
    node, _ = one(s)
    s.on_message(node, info(4))
    node, _ = one(s)
    s.on_message(node, Records(L0, 1, (Gap(1, 4, "absent"),), 4, 4, False))
    node2, _ = one(s)
    assert node2 != node
    s.on_message(node2, Records(L0, 1, (), 1, 4, False))  # empty: its tail is below
    node3, _ = one(s)
    assert node3 not in (node, node2)
    s.on_message(node3, records(1, [b"a", b"b", b"c"], 4))
    assert s.take() == [Record(1, b"a"), Record(2, b"b"), Record(3, b"c")]


def test_trim_gaps_merge_and_reads_below_the_chain_are_trim_gaps() -> None:
    base = Chain(LOG, (Segment(4, 20, REPLICATED, PARAMS),), trim_point=10)
    s = stream(base)
    node, request = one(s)
    assert s.take() == [TrimGap(1, 20)]  # below the trim point, then below the first segment
    assert request == WaitForTail(loglet_id(LOG, 4), 1)
    s.on_message(node, LogletInfo(loglet_id(LOG, 4), 6, 6, False, 3))
    node, request = one(s)
    assert isinstance(request, GetRecords)
    s.on_message(
        node,
        Records(loglet_id(LOG, 4), 1, (Gap(1, 3, "trim"), (b"c", b"d")), 5, 6, False),
    )
    assert s.take() == [TrimGap(20, 22), Record(22, b"c"), Record(23, b"d")]


def test_a_silent_server_is_skipped_and_stale_answers_are_ignored() -> None:
    s = stream()
    node, _ = one(s)
    s.on_message(node, info(3))
    node, request = one(s)
    for _ in range(3):
        s.tick()
    retry, again = one(s)
    assert retry != node and again == request
    s.on_message(node, records(1, [b"x"], 3))  # the slow server answers late: ignored
    assert s.take() == []
    s.on_message(retry, records(1, [b"a"], 3))
    assert s.take() == [Record(1, b"a")]
    older = s.chain
    s.on_chain(Chain(LOG, older.segments, trim_point=0))
    s.on_chain(extend(older, 0, 2, MEMORY))
    s.on_chain(older)  # R8: an older chain is ignored
    assert s.chain.tail.index == 1


def test_the_buffer_bounds_the_request_and_a_full_buffer_asks_nothing() -> None:
    s = stream(buffer_max=3)
    node, _ = one(s)
    s.on_message(node, info(10))
    node, request = one(s)
    assert isinstance(request, GetRecords) and request.to_offset == 4  # the free room
    s.on_message(node, records(1, [b"a", b"b", b"c"], 10))
    assert s.buffered == 3 and s.take_messages() == []
    assert s.take(2) == [Record(1, b"a"), Record(2, b"b")]
    node, request = one(s)
    assert isinstance(request, GetRecords) and (request.from_offset, request.to_offset) == (4, 6)


def test_take_within_stops_at_the_count_or_the_bytes_and_asks_once_for_all_the_room() -> None:
    s = stream(buffer_max=4)
    node, _ = one(s)
    s.on_message(node, info(10))
    node, _ = one(s)
    s.on_message(node, records(1, [b"aa", b"bb", b"cc", b"dd"], 10))
    # 2 + 1 bytes per record: the third starts at 6 >= 6 and is not taken.
    assert s.take_within(9, 6, 1) == [Record(1, b"aa"), Record(2, b"bb")]
    node, request = one(s)  # one request, for the whole room freed
    assert isinstance(request, GetRecords) and (request.from_offset, request.to_offset) == (5, 7)
    assert s.take_within(1, 100) == [Record(3, b"cc")]
    assert s.take_within(0, 100) == [] and s.take_within(5, 0) == []
    assert s.buffered == 1


def test_a_bounded_stream_finishes_and_memory_segments_are_read_in_place() -> None:
    memory = MemoryLoglet(L0)
    memory.append([b"a", b"b"])
    c = Chain(LOG, (Segment(0, 1, MEMORY),))
    s = ReadStream(c, 1, 4, memory=lambda loglet: memory if loglet == L0 else None)
    assert s.take() == [Record(1, b"a"), Record(2, b"b")]
    assert not s.finished
    memory.append([b"c", b"d"])
    s.wake()
    assert s.take() == [Record(3, b"c")] and s.finished
    assert s.take_messages() == []


@settings(max_examples=150, deadline=None)
@given(
    committed=st.integers(0, 40),
    seed=st.integers(0, 2**32),
    buffer_max=st.integers(1, 8),
)
def test_against_servers_answering_anything_they_may_the_items_are_the_log(
    committed: int, seed: int, buffer_max: int
) -> None:
    """Servers that lag, lack records (node 1 always holds them), cut answers short,
    answer late or never: the items are contiguous, right, and below the tail (R1, R2)."""
    rng = Random(seed)
    tail = committed + 1
    s = stream(buffer_max=buffer_max, resend_ticks=2, wait_ticks=3)
    items: list[object] = []
    late: list[tuple[int, msgspec.Struct]] = []
    for _ in range(2000):
        for node, request in s.take_messages():
            if rng.random() < 0.1:
                continue  # lost
            if isinstance(request, WaitForTail):
                answer: msgspec.Struct = info(rng.randint(1, tail))
            else:
                assert isinstance(request, GetRecords)
                first = request.from_offset
                known = rng.randint(1, tail)
                end = min(request.to_offset, max(known, request.known_global_tail))
                held_to = end if node == 1 else rng.randint(first, max(first, end))
                cut = rng.randint(min(first + 1, held_to), held_to) if held_to > first else first
                runs: list[tuple[bytes, ...] | Gap] = []
                if cut > first:
                    runs.append(tuple(b"%d" % o for o in range(first, cut)))
                if node != 1 and cut < end and rng.random() < 0.5:
                    runs.append(Gap(cut, end, "absent"))
                    cut = end
                answer = Records(L0, first, tuple(runs), cut, known, False)
            if rng.random() < 0.2:
                late.append((node, answer))
            else:
                s.on_message(node, answer)
        if late and rng.random() < 0.3:
            s.on_message(*late.pop(rng.randrange(len(late))))
        items += s.take(rng.randint(0, buffer_max))
        assert s.buffered <= buffer_max
        s.tick()
        if s.next_lsn == tail and not s.buffered:
            break
    items += s.take()
    assert items == [Record(o, b"%d" % o) for o in range(1, tail)]
