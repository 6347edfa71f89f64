"""One conformance suite for every loglet provider, driven through the virtual log.

Each test runs over ``memory``, ``local`` (one log-server core, ``{node: 1}``)
and ``replicated`` (three log-server cores, ``{node: 2}``) through the same
driver (``harness.Cluster``): appends, read streams, reconfigurations through
``Reconfigure`` against a fake metadata store, trims through ``TrimLog``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catenary.core.bifrost.chain import LOCAL, MEMORY, REPLICATED
from catenary.core.bifrost.read_stream import DataLoss, ReadConfig, Record, TrimGap
from catenary.core.bifrost.reconfigure import DONE
from catenary.core.loglet.sequencer import LogletSealed
from catenary.core.loglet.types import Seal, Sealed, loglet_id

from .harness import LOG, PROVIDERS, Cluster, ServerDriver, flatten, payload, records

pytestmark = pytest.mark.timeout(120)

providers = pytest.mark.parametrize("provider", PROVIDERS)


def append_all(cluster: Cluster, batches: list[list[bytes]]) -> list[int]:
    tokens = [cluster.append(batch) for batch in batches]
    cluster.settle()
    return tokens


def reconfigure(cluster: Cluster) -> None:
    task = cluster.reconfigure()
    cluster.run_until(lambda: task.done)
    assert task.phase == DONE, task.error
    cluster.settle()


@providers
def test_appends_are_gapless_and_read_back_in_order(provider: str) -> None:
    cluster = Cluster(provider)
    append_all(cluster, [[payload(i), payload(i + 100)] for i in range(10)])
    assert sorted(cluster.acked) == list(range(1, 21))
    reader = cluster.reader(1, 21)
    cluster.settle()
    assert reader.stream.finished
    assert [i.lsn for i in reader.items if isinstance(i, Record)] == list(range(1, 21))
    assert records(reader.items) == cluster.acked
    # Reads spread over the nodeset's servers and never reach a sequencer.
    assert set(cluster.reads_to) == set(cluster.servers)
    cluster.check()


@providers
def test_a_read_stream_crosses_segments_and_a_tailing_reader_keeps_up(provider: str) -> None:
    cluster = Cluster(provider)
    tailing = cluster.reader(1)
    expected: list[bytes] = []
    for round_ in range(3):
        batch = [payload(round_ * 10 + i) for i in range(4)]
        append_all(cluster, [batch])
        expected += batch
        reconfigure(cluster)
    append_all(cluster, [[b"last"]])
    expected.append(b"last")
    assert len(cluster.chain.segments) == 4
    assert [s.base_lsn for s in cluster.chain.segments] == [1, 5, 9, 13]
    bounded = cluster.reader(1, 14)
    cluster.settle()
    for reader in (tailing, bounded):
        assert [item.payload for item in reader.items if isinstance(item, Record)] == expected
    assert bounded.stream.finished and not tailing.stream.finished
    cluster.check()


@providers
def test_trim_answers_the_effective_point_and_readers_see_one_trim_gap(provider: str) -> None:
    cluster = Cluster(provider)
    append_all(cluster, [[payload(i) for i in range(5)]])
    reconfigure(cluster)
    append_all(cluster, [[payload(i) for i in range(5, 10)]])
    task = cluster.trim(7)
    cluster.run_until(lambda: task.done)
    assert task.trim_point == 7 and [s.index for s in task.dropped] == [0]
    assert cluster.chain.trim_point == 7 and cluster.chain.segments[0].index == 1
    reader = cluster.reader(1, 11)
    cluster.settle()
    assert flatten(reader.items) == [
        TrimGap(1, 8),
        (8, payload(7)),
        (9, payload(8)),
        (10, payload(9)),
    ]
    # Never back, clipped to the committed tail, never silently nothing.
    back = cluster.trim(3)
    cluster.run_until(lambda: back.done)
    assert back.trim_point == 7 and back.dropped == ()
    far = cluster.trim(1000)
    cluster.run_until(lambda: far.done)
    assert far.trim_point == 10
    cluster.settle()
    late = cluster.reader(2)
    cluster.settle()
    assert flatten(late.items) == [TrimGap(2, 11)]
    append_all(cluster, [[b"after"]])
    assert flatten(late.items) == [TrimGap(2, 11), (11, b"after")]
    cluster.check()


@providers
def test_a_log_server_trims_what_the_chain_says(provider: str) -> None:
    cluster = Cluster(provider)
    append_all(cluster, [[payload(i) for i in range(6)]])
    task = cluster.trim(3)
    cluster.run_until(lambda: task.done)
    cluster.settle()
    loglet = cluster.chain.tail.loglet(LOG)
    assert cluster.driver.trim_points(loglet) in ([3], [3, 3, 3])


@providers
def test_append_after_seal_is_refused_with_loglet_sealed(provider: str) -> None:
    cluster = Cluster(provider)
    append_all(cluster, [[b"a"]])
    old = cluster.chain.tail
    reconfigure(cluster)
    late = cluster.append_to(old, [b"late"])
    cluster.settle()
    assert isinstance(cluster.failed[late], LogletSealed)
    later = cluster.append_to(old, [b"later"])
    assert isinstance(cluster.failed[later], LogletSealed)
    assert 2 not in cluster.acked
    append_all(cluster, [[b"new"]])
    assert cluster.acked[2] == b"new"
    cluster.check()


@providers
def test_sealing_an_empty_loglet_gives_a_segment_at_the_same_base(provider: str) -> None:
    cluster = Cluster(provider)
    reader = cluster.reader(1)
    reconfigure(cluster)
    assert [s.base_lsn for s in cluster.chain.segments] == [1, 1]
    append_all(cluster, [[b"x"], [b"y"]])
    cluster.settle()
    assert flatten(reader.items) == [(1, b"x"), (2, b"y")]
    cluster.check()


@providers
def test_a_reader_holding_an_old_chain_reads_the_sealed_segment_to_its_end(provider: str) -> None:
    cluster = Cluster(provider, read_config=ReadConfig(buffer_max=1, wait_ticks=6, resend_ticks=4))
    append_all(cluster, [[payload(i) for i in range(3)]])
    reader = cluster.reader(1, auto_take=False)  # one item buffered, then it stalls
    cluster.settle()
    stale = cluster.chain
    reconfigure(cluster)
    append_all(cluster, [[b"new"]])
    assert reader.stream.chain == stale  # nobody told it: segment 0 is open to it
    for _ in range(4):
        cluster.take(reader, 1)
        cluster.settle()
    assert flatten(reader.items) == [(1, payload(0)), (2, payload(1)), (3, payload(2)), (4, b"new")]
    assert reader.stream.chain == cluster.chain  # it asked for the chain at the sealed tail
    cluster.check()


@providers
def test_racing_reconfigurations_agree_and_the_loser_adopts(provider: str) -> None:
    cluster = Cluster(provider, seed=3)
    append_all(cluster, [[payload(i)] for i in range(4)])
    first, second = cluster.reconfigure(), cluster.reconfigure()
    cluster.run_until(lambda: first.done and second.done)
    assert first.phase == second.phase == DONE
    assert first.segment == second.segment == cluster.chain.tail
    assert [first.adopted, second.adopted].count(True) == 1
    assert len(cluster.chain.segments) == 2
    assert cluster.chain.tail.base_lsn == 5
    append_all(cluster, [[b"next"]])
    reader = cluster.reader(1, 6)
    cluster.settle()
    assert [i.payload for i in reader.items if isinstance(i, Record)] == [
        *(payload(i) for i in range(4)),
        b"next",
    ]
    cluster.check()


@providers
def test_appends_racing_a_seal_are_readable_when_acknowledged_and_none_beyond(
    provider: str,
) -> None:
    raced = 0
    for seed in range(6):
        cluster = Cluster(provider, seed=seed)
        reader = cluster.reader(1)
        tokens = [cluster.append([payload(i)]) for i in range(12)]
        for _ in range(seed * 3):
            cluster.step()
        task = cluster.reconfigure()
        for i in range(12, 20):
            cluster.step()
            tokens.append(cluster.append([payload(i)]))
        cluster.run_until(lambda: task.done)  # noqa: B023
        cluster.settle()
        assert task.phase == DONE
        sealed = loglet_id(LOG, 0)
        end = cluster.chain.tail.base_lsn
        acked_in_sealed = [lsn for lsn, (loglet, _) in cluster.acked_at.items() if loglet == sealed]
        assert all(lsn < end for lsn in acked_in_sealed), "acknowledged beyond the sealed tail"
        raced += any(isinstance(cluster.failed.get(t), LogletSealed) for t in tokens)
        got = records(reader.items)
        for lsn, value in cluster.acked.items():
            assert got.get(lsn) == value, (seed, lsn)
        cluster.check()
    assert provider == MEMORY or raced >= 3, raced  # the schedules do race the seal


@providers
def test_the_read_buffer_is_bounded(provider: str) -> None:
    cluster = Cluster(
        provider, read_config=ReadConfig(buffer_max=4, bytes_max=1 << 10, wait_ticks=6)
    )
    append_all(cluster, [[payload(i) for i in range(10)]])
    reader = cluster.reader(1, auto_take=False)
    cluster.settle()
    assert reader.stream.buffered == 4
    assert not cluster.net  # nothing requested while full
    got = cluster.take(reader, 3)
    cluster.settle()
    assert reader.stream.buffered == 4
    got += cluster.take(reader)
    cluster.settle()
    got += cluster.take(reader)
    cluster.settle()
    assert [i.lsn for i in got if isinstance(i, Record)] == list(range(1, 11))


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["append", "step", "reconfigure", "trim", "reader", "tick", "restart"]),
        st.integers(0, 50),
    ),
    min_size=5,
    max_size=60,
)


@pytest.mark.parametrize("provider", PROVIDERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS, seed=st.integers(0, 2**16), lossy=st.booleans())
def test_any_interleaving_keeps_the_log_invariants(
    provider: str, actions: list[tuple[str, int]], seed: int, lossy: bool
) -> None:
    # Messages are reordered always, and lost (5%) when lossy; metadata calls are not lost.
    cluster = Cluster(provider, seed=seed, loss=0.05 if lossy else 0.0)
    cluster.reader(1)
    n = 0
    for action, arg in actions:
        if action == "append":
            cluster.append([payload(n + i) for i in range(1 + arg % 3)])
            n += 3
        elif action == "step":
            for _ in range(arg):
                cluster.step()
        elif action == "reconfigure" and sum(not t.done for t in cluster.tasks.values()) < 2:
            cluster.reconfigure()
        elif action == "trim":
            cluster.trim(cluster.chain.trim_point + arg % 4)
        elif action == "reader":
            cluster.reader(1 + arg % 8, None if arg % 2 else 1 + arg)
        elif action == "restart" and cluster.servers:
            cluster.servers[1 + arg % len(cluster.servers)].restart()
        else:
            cluster.tick()
    cluster.settle()
    assert all(task.done for task in cluster.tasks.values())
    cluster.check()
    # Every acknowledged record above the trim point is read by the first reader.
    first = next(iter(cluster.readers.values()))
    got = records(first.items)
    trim_point = cluster.chain.trim_point
    for lsn, value in cluster.acked.items():
        if lsn > trim_point:
            assert got.get(lsn) == value, lsn


def test_finders_with_different_candidates_never_let_a_reader_past_the_recorded_tail() -> None:
    """T4 end to end: two finders see different f-majorities, so different tails; the
    loser has repaired a record the chain does not admit.  No reader may see it."""
    cluster = Cluster(REPLICATED, seed=1)
    reader = cluster.reader(1)
    append_all(cluster, [[b"a"]])
    assert isinstance(cluster.driver, ServerDriver)
    sequencer_actor = next(iter(cluster.driver.sequencers.values()))[0]
    cluster.append([b"b"])  # offset 2 reaches node 1 only, and is never acknowledged
    cluster.deliver_where(lambda s, d, m: s == sequencer_actor and d == 1)
    cluster.deliver_where(lambda s, d, m: s == 1 and d == sequencer_actor, drop=True)
    cluster.deliver_where(lambda s, d, m: s == sequencer_actor, drop=True)
    loser, winner = cluster.reconfigure(), cluster.reconfigure()
    a, b = cluster.actor_of(loser), cluster.actor_of(winner)
    # The loser seals {1, 2}: its candidate covers offset 2 (node 1 holds it).
    cluster.deliver_where(
        lambda s, d, m: (
            isinstance(m, Seal | Sealed) and ((s == a and d in (1, 2)) or (d == a and s in (1, 2)))
        )
    )
    # The winner seals {2, 3} (neither holds offset 2) and finds tail 2; its write waits.
    cluster.deliver_where(lambda s, d, m: (s == b and d in (2, 3)) or (d == b and s in (2, 3)))
    assert winner.tail == 2
    # The loser repairs offset 2 to a write quorum and finishes while the chain is open.
    cluster.deliver_where(lambda s, d, m: s == a or d == a)
    assert loser.tail == 3
    for _ in range(10):  # the reader polls the sealed servers meanwhile
        cluster.tick()
        cluster.deliver_where(lambda s, d, m: s not in (a, b) and d not in (a, b))
    assert [(i.lsn, i.payload) for i in reader.items if isinstance(i, Record)] == [(1, b"a")]
    cluster.run_metadata(winner)
    cluster.run_metadata(loser)
    cluster.settle()
    assert winner.phase == loser.phase == DONE and loser.adopted
    assert cluster.chain.tail.base_lsn == 2
    append_all(cluster, [[b"c"]])
    assert records(reader.items) == {1: b"a", 2: b"c"}
    cluster.check()


@pytest.mark.parametrize("provider", [LOCAL, REPLICATED])
def test_records_no_server_holds_are_one_data_loss_gap(provider: str) -> None:
    cluster = Cluster(provider)
    append_all(cluster, [[payload(i) for i in range(4)]])
    reconfigure(cluster)
    append_all(cluster, [[b"after"]])
    for server in cluster.servers.values():
        server.restart(wipe=loglet_id(LOG, 0))  # every copy of segment 0 is gone
    cluster.allow_data_loss = True
    reader = cluster.reader(2)
    cluster.settle()
    assert flatten(reader.items) == [DataLoss(2, 5), (5, b"after")]
