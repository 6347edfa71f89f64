"""Reconfiguration (RC1-RC4), trim orchestration (TR1-TR2) and the memory loglet (M1-M4)."""

from __future__ import annotations

import pytest

from catenary.core.bifrost.chain import (
    LOCAL,
    MEMORY,
    REPLICATED,
    Chain,
    LocalParams,
    ReplicatedParams,
    Segment,
    chain_key,
    decode_chain,
    extend,
)
from catenary.core.bifrost.memory import MemoryLoglet, local_placement
from catenary.core.bifrost.reconfigure import (
    DONE,
    FAILED,
    PROPOSING,
    CasChain,
    NewSegment,
    ReadChain,
    Reconfigure,
    SendLoglet,
    TrimLog,
)
from catenary.core.loglet.log_server import LogServer
from catenary.core.loglet.nodeset import LogServerInfo, NodesetUnavailable
from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.sequencer import LogletSealed
from catenary.core.loglet.types import (
    Gap,
    GetRecords,
    Seal,
    SequencerId,
    Store,
    Tail,
    Trim,
    loglet_id,
)

pytestmark = pytest.mark.timeout(60)

LOG = 2
R2 = ReplicationProperty(node=2)
PARAMS = ReplicatedParams(SequencerId(9, 1), (1, 2, 3), R2)
SERVERS = {i: LogServerInfo() for i in range(1, 5)}
NEW = NewSegment(REPLICATED, sequencer=SequencerId(7, 1), replication=R2)
L0 = loglet_id(LOG, 0)


def chain() -> Chain:
    return Chain(LOG, (Segment(0, 1, REPLICATED, PARAMS),))


def run(task: Reconfigure, servers: dict[int, LogServer]) -> list[CasChain | ReadChain]:
    """Deliver loglet messages until only metadata effects remain; returns them."""
    meta: list[CasChain | ReadChain] = []
    for _ in range(100):
        effects = task.take_effects()
        if not effects:
            task.tick()
            effects = task.take_effects()
            if not effects:
                return meta
        for effect in effects:
            if isinstance(effect, SendLoglet):
                result = servers[effect.node].handle(99, effect.message)
                for _, reply in result.after_persist:
                    task.on_message(effect.node, reply)
            else:
                meta.append(effect)
    raise AssertionError("reconfiguration did not converge")


def servers_with(records: int) -> dict[int, LogServer]:
    servers = {i: LogServer(i) for i in (1, 2, 3)}
    for server in servers.values():
        if records:
            server.handle(9, Store(L0, PARAMS.sequencer, 1, tuple(b"x" for _ in range(records)), 1))
    return servers


def test_the_chain_is_proposed_after_the_seal_at_the_found_tail_and_tail_is_withheld() -> None:
    servers = servers_with(4)
    task = Reconfigure(chain(), 5, NEW, repairer=SequencerId(8, 1), servers=SERVERS)
    sent: list[SendLoglet] = [e for e in task.take_effects() if isinstance(e, SendLoglet)]
    assert {type(e.message) for e in sent} == {Seal}  # RC1: nothing proposed before the seal
    for e in sent:
        for _, reply in servers[e.node].handle(99, e.message).after_persist:
            task.on_message(e.node, reply)
    meta = run(task, servers)
    assert len(meta) == 1 and isinstance(meta[0], CasChain)
    cas = meta[0]
    assert cas.key == chain_key(LOG) and cas.expected_version == 5
    assert decode_chain(cas.value) == cas.chain
    assert cas.chain.tail.base_lsn == 5 and task.tail == 5
    params = cas.chain.tail.replicated
    assert params is not None and params.sequencer == SequencerId(7, 1)
    assert set(params.nodeset) >= {1, 2, 3}  # RC4: the previous nodeset first
    # RC2: no server was told the candidate before the chain recorded it.
    assert all(s.state(L0).known_global_tail == 1 for s in servers.values())  # type: ignore[union-attr]
    task.on_cas(True, 6)
    assert task.phase == DONE and not task.adopted and task.segment == cas.chain.tail
    released = task.take_effects()
    assert {(e.node, e.message) for e in released if isinstance(e, SendLoglet)} == {
        (n, Tail(L0, 5)) for n in (1, 2, 3)
    }


def test_a_lost_race_adopts_the_winner_and_releases_the_recorded_tail() -> None:
    servers = servers_with(4)
    task = Reconfigure(chain(), 5, NEW, repairer=SequencerId(8, 1), servers=SERVERS)
    run(task, servers)
    task.on_cas(False)
    assert task.take_effects() == [ReadChain(chain_key(LOG))]
    winner = extend(chain(), 0, 3, MEMORY)  # another finder recorded tail 3
    task.on_chain_read(winner, 6)
    assert task.phase == DONE and task.adopted and task.segment == winner.tail
    released = [e.message for e in task.take_effects() if isinstance(e, SendLoglet)]
    assert released and all(m == Tail(L0, 3) for m in released)


def test_an_adopted_chain_several_segments_on_releases_the_sealed_segments_own_end() -> None:
    # The winner's chain already moved two segments past the one this task sealed: the
    # tail released to the sealed segment's servers is where the *next* segment starts
    # (LSN 3 -> offset 3), not where the chain's tail segment starts (LSN 9 -> offset 9),
    # which would let readers of the sealed segment read past its end (sim log seed
    # 226980020844369 saw that as data loss).
    servers = servers_with(4)
    task = Reconfigure(chain(), 5, NEW, repairer=SequencerId(8, 1), servers=SERVERS)
    run(task, servers)
    task.on_cas(False)
    task.take_effects()
    winner = extend(extend(extend(chain(), 0, 3, MEMORY), 1, 4, MEMORY), 2, 4, MEMORY)
    assert [s.base_lsn for s in winner.segments] == [1, 3, 6, 9]
    task.on_chain_read(winner, 9)
    assert task.phase == DONE and task.adopted and task.segment == winner.tail
    released = [e.message for e in task.take_effects() if isinstance(e, SendLoglet)]
    assert released and all(m == Tail(L0, 3) for m in released)


def test_a_failed_cas_without_a_winner_proposes_the_same_tail_again() -> None:
    servers = servers_with(2)
    task = Reconfigure(chain(), 5, NEW, repairer=SequencerId(8, 1), servers=SERVERS)
    run(task, servers)
    task.on_cas(False)
    task.take_effects()
    trimmed = Chain(LOG, chain().segments, trim_point=1)  # the chain changed, not its tail
    task.on_chain_read(trimmed, 9)
    (cas,) = task.take_effects()
    assert isinstance(cas, CasChain) and cas.expected_version == 9
    assert cas.chain.trim_point == 1 and cas.chain.tail.base_lsn == 3
    assert task.phase == PROPOSING


def test_no_nodeset_fails_before_anything_is_proposed() -> None:
    servers = servers_with(1)
    task = Reconfigure(chain(), 1, NEW, repairer=SequencerId(8, 1), servers={1: LogServerInfo()})
    assert task.phase == FAILED and isinstance(task.error, NodesetUnavailable)
    assert task.take_effects() == []  # not even a seal: the log stays writable
    assert run(task, servers) == []
    assert not any(s.state(L0).sealed for s in servers.values())  # type: ignore[union-attr]


def test_memory_and_local_segments_are_sealed_in_place_or_as_one_node() -> None:
    memory = MemoryLoglet(L0)
    memory.append([b"a", b"b"])
    c = Chain(LOG, (Segment(0, 1, MEMORY),))
    task = Reconfigure(
        c, 1, NewSegment(LOCAL, node=4), repairer=SequencerId(8, 1), memory=lambda _: memory
    )
    (cas,) = task.take_effects()
    assert memory.sealed and isinstance(cas, CasChain)
    assert cas.chain.tail == Segment(1, 3, LOCAL, local=LocalParams(4))
    assert local_placement(LocalParams(4)).nodeset == (4,)
    # A local segment is sealed by a finder over its one node.
    task2 = Reconfigure(cas.chain, 2, NewSegment(MEMORY), repairer=SequencerId(8, 1))
    seals = [e for e in task2.take_effects() if isinstance(e, SendLoglet)]
    assert [(e.node, type(e.message)) for e in seals] == [(4, Seal)]


def test_trim_writes_the_chain_then_tells_the_servers_and_never_goes_back() -> None:
    c = extend(chain(), 0, 6, REPLICATED, replicated=PARAMS)  # segment 0: LSNs 1-5
    task = TrimLog(c, 3, 7, committed_tail=20)
    (cas,) = task.take_effects()
    assert isinstance(cas, CasChain) and cas.chain.trim_point == 7
    task.on_cas(True, 4)
    assert task.phase == DONE and task.trim_point == 7 and [s.index for s in task.dropped] == [0]
    trims = {(e.node, e.message) for e in task.take_effects() if isinstance(e, SendLoglet)}
    l1 = loglet_id(LOG, 1)
    assert trims == {(n, Trim(l1, 2)) for n in (1, 2, 3)} | {(n, Trim(L0, 5)) for n in (1, 2, 3)}
    again = TrimLog(cas.chain, 4, 3, committed_tail=20)
    assert again.done and again.trim_point == 7 and again.dropped == ()
    assert not any(isinstance(e, CasChain) for e in again.take_effects())


def test_trim_retries_a_lost_cas_on_the_chain_it_reads() -> None:
    task = TrimLog(chain(), 3, 4, committed_tail=10)
    task.take_effects()
    task.on_cas(False)
    assert task.take_effects() == [ReadChain(chain_key(LOG))]
    task.on_chain_read(Chain(LOG, chain().segments, trim_point=6), 5)
    assert task.done and task.trim_point == 6  # already further: nothing to write


def test_memory_loglet_contract() -> None:
    m = MemoryLoglet(L0)
    with pytest.raises(ValueError):
        m.append([])
    assert m.append([b"a", b"b"]) == 2 and m.append([b"c"]) == 3  # M1
    assert m.find_tail() == (False, 4)
    assert m.trim(9) == 3 - 0 and m.trim_point() == 3  # M3: clipped to tail - 1
    assert m.trim(1) == 3
    assert m.read(1, 10) == [Gap(1, 4, "trim")]  # M4
    assert m.append([b"d"]) == 4
    assert m.read(2, 10) == [Gap(2, 4, "trim"), (4, b"d")]
    assert m.seal() == 5 and m.find_tail() == (True, 5)
    with pytest.raises(LogletSealed):  # M2
        m.append([b"e"])
    answer = m.get_records(GetRecords(L0, 1, 9, 1, 1))
    assert answer.runs == (Gap(1, 4, "trim"), (b"d",)) and answer.next_offset == 5
    assert answer.sealed and answer.known_global_tail == 5
    info = m.info()
    assert (info.local_tail, info.sealed, info.trim_point) == (5, True, 3)
