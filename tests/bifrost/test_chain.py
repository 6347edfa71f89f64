"""Chains of segments: lookups, extension, races, trims, encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catenary.core.bifrost.chain import (
    LOCAL,
    MEMORY,
    REPLICATED,
    Chain,
    ChainError,
    LocalParams,
    ReplicatedParams,
    Segment,
    adopt,
    chain_key,
    decode_chain,
    encode_chain,
    extend,
    trim,
)
from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.types import SequencerId, loglet_id, split_loglet_id

pytestmark = pytest.mark.timeout(60)

PARAMS = ReplicatedParams(SequencerId(1, 2), (1, 2, 3), ReplicationProperty(node=2))


def fresh(log_id: int = 4) -> Chain:
    return Chain(log_id, (Segment(0, 1, REPLICATED, PARAMS),))


def test_lsns_map_to_segments_and_a_sealed_empty_segment_is_skipped() -> None:
    chain = fresh()
    chain = extend(chain, 0, 11, MEMORY)  # segment 0 held LSNs 1..10
    chain = extend(chain, 1, 1, LOCAL, local=LocalParams(2))  # segment 1 sealed empty
    chain = extend(chain, 2, 6, MEMORY)  # segment 2 held 11..15
    assert [s.base_lsn for s in chain.segments] == [1, 11, 11, 16]
    assert chain.find(0) is None
    assert chain.find(1) == chain.segments[0] and chain.find(10) == chain.segments[0]
    assert chain.find(11) == chain.segments[2]  # not the empty segment 1
    assert chain.find(10**9) == chain.tail
    assert chain.end_of(chain.segments[0]) == 11 and chain.end_of(chain.tail) is None
    assert chain.segment(2) == chain.segments[2] and chain.segment(9) is None


def test_extend_only_at_the_tail_and_never_below_its_base() -> None:
    chain = extend(fresh(), 0, 5, MEMORY)
    with pytest.raises(ChainError, match="not the tail"):
        extend(chain, 0, 9, MEMORY)
    with pytest.raises(ChainError, match="at least 1"):
        extend(chain, 1, 0, MEMORY)
    with pytest.raises(ChainError, match="below the previous base"):
        Chain(1, (Segment(0, 5, MEMORY), Segment(1, 4, MEMORY)))
    with pytest.raises(ChainError, match="segment 3 after 0"):
        Chain(1, (Segment(0, 5, MEMORY), Segment(3, 6, MEMORY)))
    with pytest.raises(ChainError, match="without parameters"):
        Chain(1, (Segment(0, 1, REPLICATED),))
    with pytest.raises(ChainError, match="unknown provider"):
        Chain(1, (Segment(0, 1, "tape"),))


def test_the_loser_of_a_race_adopts_the_winners_segment() -> None:
    chain = fresh()
    winner = extend(chain, 0, 7, MEMORY)
    assert adopt(winner, 0) == winner.tail
    assert adopt(chain, 0) is None  # nobody moved it: try again


def test_trim_never_goes_back_is_clipped_and_reports_dropped_segments() -> None:
    chain = extend(extend(fresh(), 0, 11, MEMORY), 1, 11, MEMORY)  # [1,11) [11,21) [21,..)
    trimmed, point, dropped = trim(chain, 15, committed_tail=30)
    assert point == 15 and [s.index for s in dropped] == [0]
    assert [s.index for s in trimmed.segments] == [1, 2] and trimmed.trim_point == 15
    # Clipped to the committed tail; the open tail segment is never dropped.
    trimmed, point, dropped = trim(trimmed, 10**6, committed_tail=25)
    assert point == 24 and [s.index for s in dropped] == [1]
    assert [s.index for s in trimmed.segments] == [2]
    again, point, dropped = trim(trimmed, 3, committed_tail=25)
    assert point == 24 and dropped == () and again == trimmed


def test_encoding_round_trips_and_garbage_is_a_chain_error() -> None:
    chain = extend(fresh(9), 0, 3, LOCAL, local=LocalParams(3))
    assert decode_chain(encode_chain(chain)) == chain
    assert chain_key(9) == "logs/9"
    with pytest.raises(ChainError, match="undecodable"):
        decode_chain(b"\xc1")
    with pytest.raises(ChainError, match="invalid"):
        decode_chain(encode_chain(chain)[:-3] + b"\x01\x02\x03")


def test_loglet_ids_pack_log_and_segment() -> None:
    assert split_loglet_id(loglet_id(7, 3)) == (7, 3)
    assert fresh(7).tail.loglet(7) == loglet_id(7, 0)
    with pytest.raises(ValueError, match="log id"):
        loglet_id(1 << 32, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=12), st.integers(0, 300))
def test_every_lsn_after_the_first_base_has_exactly_one_segment(
    tails: list[int], probe: int
) -> None:
    chain = fresh()
    for tail in tails:
        chain = extend(chain, chain.tail.index, tail, MEMORY)
    segment = chain.find(probe)
    if probe < 1:
        assert segment is None
        return
    assert segment is not None
    end = chain.end_of(segment)
    assert segment.base_lsn <= probe and (end is None or probe < end)
