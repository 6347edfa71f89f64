"""The fault suite's checkers on small hand-made records: each must pass a good
history and fail a planted bad one, or it proves nothing."""

from __future__ import annotations

import pytest

from catenary.api.types import Event
from catenary.testing.faults import checkers
from catenary.testing.faults.history import Record
from catenary.testing.faults.workload import LeaseEpisode, WatchSegment

K = "/faults/k0"


def _put(call: float, ret: float, value: bytes, version: int) -> Record:
    return Record(1, "put", K, call, value, ret=ret, outcome="ok", version=version)


def _get(
    call: float, ret: float, value: bytes | None, version: int = 0, *, final: bool = False
) -> Record:
    return Record(
        checkers.FINAL if final else 2,
        "get",
        K,
        call,
        ret=ret,
        outcome="ok",
        found=value is not None,
        got=value or b"",
        version=version,
    )


def test_linearizable_passes_and_catches_a_stale_read() -> None:
    good = [_put(0.0, 1.0, b"a", 5), _put(2.0, 3.0, b"b", 6), _get(4.0, 5.0, b"b", 6)]
    assert checkers.linearizable(good).status == "ok"
    bad = [*good[:2], _get(4.0, 5.0, b"a", 5)]
    assert checkers.linearizable(bad).status == "violation"


def test_an_indeterminate_write_may_or_may_not_have_happened() -> None:
    maybe = Record(1, "put", K, 2.0, b"b", outcome="indeterminate")
    assert (
        checkers.linearizable([_put(0.0, 1.0, b"a", 5), maybe, _get(4, 5, b"a", 5)]).status == "ok"
    )
    assert (
        checkers.linearizable([_put(0.0, 1.0, b"a", 5), maybe, _get(4, 5, b"b", 7)]).status == "ok"
    )


def test_a_lost_write_is_caught() -> None:
    history = [_put(0.0, 1.0, b"a", 5), _put(2.0, 3.0, b"b", 6)]
    assert checkers.no_lost_writes([*history, _get(9, 10, b"b", 6, final=True)], [K]).status == "ok"
    lost = checkers.no_lost_writes([*history, _get(9, 10, b"a", 5, final=True)], [K])
    assert lost.status == "violation"
    gone = checkers.no_lost_writes([*history, _get(9, 10, None, final=True)], [K])
    assert gone.status == "violation"


def test_watch_events_repeated_missed_or_invented_are_caught() -> None:
    history = [_put(0.0, 1.0, b"a", 5), _put(2.0, 3.0, b"b", 6), _put(4.0, 5.0, b"c", 7)]
    events = [Event("put", K, b"a", 5), Event("put", K, b"b", 6), Event("put", K, b"c", 7)]
    assert checkers.watches(history, {K: [WatchSegment(4, events)]}, {}).status == "ok"
    repeated = [*events[:2], events[1], events[2]]
    assert checkers.watches(history, {K: [WatchSegment(4, repeated)]}, {}).status == "violation"
    missed = [events[0], events[2]]
    assert checkers.watches(history, {K: [WatchSegment(4, missed)]}, {}).status == "violation"
    invented = [*events, Event("put", K, b"zzz", 8)]
    assert checkers.watches(history, {K: [WatchSegment(4, invented)]}, {}).status == "violation"
    # A resubscription after compaction may skip what happened in between.
    resumed = {K: [WatchSegment(4, events[:1], "compacted"), WatchSegment(6, events[2:])]}
    assert checkers.watches(history, resumed, {}).status == "ok"


def test_a_lease_expiring_before_its_ttl_is_caught() -> None:
    def episode(gone_at: float) -> LeaseEpisode:
        e = LeaseEpisode(0, "/faults/lease0", 2000, lease=9)
        e.records = [
            Record(1000, "grant", e.key, 0.0, ret=0.1, outcome="ok", version=9),
            Record(1000, "put", e.key, 0.2, b"x", ret=0.3, outcome="ok", version=3),
            Record(1000, "keepalive", e.key, 1.0, ret=1.1, outcome="ok"),
            Record(1000, "get", e.key, gone_at, ret=gone_at + 0.05, outcome="ok", found=False),
        ]
        return e

    assert checkers.leases([episode(3.5)]).status == "ok"  # past 1.0 + 2 s
    assert checkers.leases([episode(2.0)]).status == "violation"  # before 1.0 + 2 s


def test_the_cli_refuses_an_unknown_nemesis() -> None:
    from click.testing import CliRunner

    from catenary.cli.main import cli

    result = CliRunner().invoke(cli, ["faults", "run", "--nemesis", "kill,meteor"])
    assert result.exit_code == 2
    assert "meteor" in result.output
    help_text = CliRunner().invoke(cli, ["faults", "run", "--help"]).output
    assert "--seed" in help_text and "--nemesis" in help_text


def test_searching_quiescent_segments_agrees_with_one_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small random histories (writes of unknown outcome included), half of
    # them with a get's answer replaced: segmenting must never change a verdict.
    from random import Random

    from catenary.testing import linearizability as lin
    from catenary.testing.faults.synthetic import history

    segmented = lin._search_segments

    def whole(
        ops: list[lin.Operation],
        deadlines: list[float],
        initial: tuple[bytes | None, int, int],
        max_steps: int,
        lazy: bool = False,
        placeholder: bytes = b"",
    ) -> object:
        return lin._search(ops, deadlines, initial, max_steps, lazy, placeholder)

    outcomes: set[str] = set()
    for seed in range(300):
        rng = Random(seed)
        ops = history(
            rng.randrange(10, 60),
            keys=1,
            processes=rng.randrange(2, 5),
            indeterminate=rng.choice([0.0, 0.1, 0.3]),
            seed=seed,
        )
        gets = [i for i, op in enumerate(ops) if op.kind == "get"]
        puts = [op for op in ops if op.kind == "put"]
        if gets and puts and rng.random() < 0.5:
            i, put = rng.choice(gets), rng.choice(puts)
            version = put.result.version if isinstance(put.result, lin.Written) else 7
            get = ops[i]
            ops[i] = lin.Operation(
                get.process,
                get.call_time,
                get.return_time,
                "get",
                get.key,
                result=rng.choice([None, (put.value, version)]),
            )
        monkeypatch.setattr(lin, "_search_segments", segmented)
        one = lin.check(ops).outcome
        monkeypatch.setattr(lin, "_search_segments", whole)
        other = lin.check(ops).outcome
        assert one == other, f"seed {seed}: segmented {one}, whole {other}"
        outcomes.add(one)
    assert outcomes == {"ok", "violation"}
