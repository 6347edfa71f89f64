"""LogServerLoop: bounded inbox, group commit, replies only after their job (H1-H4)."""

from __future__ import annotations

import pytest

from catenary.core.loglet.log_server import LogServer, PutRecords, PutSeal, PutSequencer
from catenary.core.loglet.types import (
    OK,
    GetLogletInfo,
    GetRecords,
    LogletInfo,
    Seal,
    Sealed,
    SequencerId,
    Store,
    Stored,
)
from catenary.host.log_server import LogServerLoop

SEQ = SequencerId(9, 1)


def store(loglet: int, first: int, *payloads: bytes) -> Store:
    return Store(loglet, SEQ, first, payloads, 1)


def test_one_job_for_stores_of_many_loglets_and_replies_wait_for_it() -> None:
    loop = LogServerLoop(LogServer(1))
    assert loop.offer(9, store(1, 1, b"a"))
    assert loop.offer(9, store(2, 1, b"b", b"c"))
    assert loop.offer(7, Seal(3))
    out = loop.poll(100)
    assert out.send == [] and out.reads == []
    assert out.job is not None and out.job.started_us == 100
    assert out.job.writes == (
        PutSequencer(1, SEQ),
        PutRecords(1, 1, (b"a",)),
        PutSequencer(2, SEQ),
        PutRecords(2, 1, (b"b", b"c")),
        PutSeal(3),
    )
    assert loop.busy
    released = loop.job_done()
    assert released.send == [
        (9, Stored(1, 1, OK, 2)),
        (9, Stored(2, 1, OK, 3)),
        (7, Sealed(3, 1)),
    ]
    assert not loop.busy


def test_inputs_during_a_job_form_the_next_batch() -> None:
    loop = LogServerLoop(LogServer(1))
    loop.offer(9, store(1, 1, b"a"))
    first = loop.poll(0)
    assert first.job is not None
    loop.offer(5, GetLogletInfo(1))
    loop.offer(9, store(1, 2, b"b"))
    # Nothing is fed to the core while the job is in flight: the info must not
    # report a tail the disk does not hold yet.
    assert loop.poll(1).job is None and loop.pending == 2
    loop.job_done()
    second = loop.poll(2)
    assert second.job is not None and second.job.writes == (PutRecords(1, 2, (b"b",)),)
    released = loop.job_done()
    assert released.send == [(5, LogletInfo(1, 2, 1, False, 0)), (9, Stored(1, 2, OK, 3))]


def test_a_batch_without_writes_answers_at_once() -> None:
    loop = LogServerLoop(LogServer(1))
    loop.offer(5, GetLogletInfo(1))
    loop.offer(5, GetRecords(1, 1, 5, 100, 1))
    out = loop.poll(0)
    assert out.job is None
    assert out.send == [(5, LogletInfo(1, 1, 1, False, 0))]
    assert len(out.reads) == 1 and out.reads[0].src == 5


def test_reads_of_a_batch_with_writes_wait_for_the_job() -> None:
    loop = LogServerLoop(LogServer(1))
    loop.offer(9, store(1, 1, b"a"))
    loop.offer(5, GetRecords(1, 1, 5, 100, 2))
    out = loop.poll(0)
    assert out.reads == [] and out.job is not None
    assert len(loop.job_done().reads) == 1


def test_batch_max_and_a_full_inbox_drops() -> None:
    loop = LogServerLoop(LogServer(1), inbox_max=3, batch_max=2)
    for i in range(3):
        assert loop.offer(5, GetLogletInfo(i))
    assert not loop.offer(5, GetLogletInfo(9))
    assert loop.dropped == 1
    assert len(loop.poll(0).send) == 2
    assert len(loop.poll(0).send) == 1
    assert loop.poll(0).send == []


def test_job_done_without_a_job_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        LogServerLoop(LogServer(1)).job_done()
    with pytest.raises(ValueError):
        LogServerLoop(LogServer(1), inbox_max=0)
