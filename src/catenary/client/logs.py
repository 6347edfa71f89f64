"""The log client: append records to a log, read them back in order, tail, trim, seal, move.

Rules:

1. Appends go to any node (the node forwards them to the log's sequencer).
   An append answered ``SEALED`` (the log's tail segment was sealed, or is
   moving to a new sequencer, and the node saw no new segment in time),
   ``UNAVAILABLE`` or ``OVERLOADED`` did not commit where the node looked;
   it is retried within the call's deadline.  Each attempt gives the node four
   fifths of the time left, less 50 ms, so its answer (``SEALED`` after waiting
   for a new segment) comes back before the deadline.  A retry after a seal may leave
   the batch in the log twice (the first attempt may have been kept by the
   seal's repair): appends are at least once when retried.  An outcome that
   is unknown raises ``IndeterminateError``.
2. ``read`` is an async iterator of ``LogRecord`` and ``LogGap`` in LSN order
   with no holes: every LSN from ``from_lsn`` on is a record or inside a gap.
   Bounded reads stop at ``to_lsn`` (exclusive); open-ended reads tail the
   log, waiting up to ``wait_ms`` per request for new records (at most half the
   client's ``attempt_timeout_s``), across seals
   and reconfigurations.  A read keeps to one node while it answers, so the
   node can continue its read stream; on a failure it moves to another node
   from where it stopped.
3. An ``Appender`` batches the records of many concurrent callers into one
   append request (at most ``batch_records_max`` records, ``inflight_max``
   requests in flight); each caller gets its own record's LSN.
4. Errors are typed: ``NotFoundError`` for an unknown log, ``TooLargeError``
   for a record over the node's limit (never retried), ``SealedError`` when
   a sealed log took no new segment within the deadline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catenary.api import messages as m
from catenary.api.messages import LogGap, LogInfo, LogRecord
from catenary.client.errors import (
    BadRequestError,
    CatenaryError,
    InternalError,
    SealedError,
)

ANY = "any"
LEADER = "leader"

if TYPE_CHECKING:
    from catenary.client.client import Client

LogItem = LogRecord | LogGap


@dataclass(frozen=True)
class AppendResult:
    first_lsn: int
    last_lsn: int


@dataclass(frozen=True)
class TailInfo:
    tail: int  # the first LSN not yet committed
    sealed: bool
    trim_point: int


@dataclass(frozen=True)
class TrimResult:
    trim_point: int
    segments_dropped: int


def _log_id(log: int) -> int:
    if not isinstance(log, int) or isinstance(log, bool) or not 0 <= log < 1 << 32:
        raise BadRequestError(f"a log id is an int in [0, 2^32), got {log!r}")
    return log


def _payloads(records: bytes | Sequence[bytes]) -> tuple[bytes, ...]:
    if isinstance(records, bytes | bytearray | memoryview):
        return (bytes(records),)
    if type(records) is tuple and records and set(map(type, records)) == {bytes}:
        return records  # the common case, checked without a Python loop per record
    out = []
    for record in records:
        if not isinstance(record, bytes | bytearray | memoryview):
            raise BadRequestError(f"a record must be bytes, got {type(record).__name__}")
        out.append(record if type(record) is bytes else bytes(record))
    if not out:
        raise BadRequestError("an append needs at least one record")
    return tuple(out)


class LogsClient:
    """``client.logs``: the log service (rules 1-4)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def _call(
        self, kind: type, build: object, *, write: bool, target: str, timeout_s: float | None
    ) -> object:
        from catenary.client.client import Policy

        policy = Policy.WRITE if write else Policy.READ
        reply = await self._client._invoke(
            build,  # type: ignore[arg-type]
            policy=policy,
            target=target,
            timeout_s=timeout_s,
        )
        if not isinstance(reply, kind):
            raise InternalError(f"unexpected reply {type(reply).__name__}, wanted {kind.__name__}")
        return reply

    async def append_result(
        self, log: int, records: bytes | Sequence[bytes], *, timeout_s: float | None = None
    ) -> AppendResult:
        """Append ``records`` as one batch; returns the first and last LSN given to it."""
        log = _log_id(log)
        payloads = _payloads(records)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s if timeout_s is not None else self._client.timeout_s)

        def build(i: int) -> m.LogAppend:
            # Rule 1: the node answers within the time this attempt has left (less a
            # margin for the way back and a busy machine: a fifth and 50 ms), so a
            # sealed log is reported, not timed out.
            left_ms = int((deadline - loop.time()) * 1000 * 0.8) - 50
            return m.LogAppend(id=i, log=log, payloads=payloads, timeout_ms=max(1, left_ms))

        reply = await self._call(
            m.LogAppendReply,
            build,
            write=True,
            target=ANY,
            timeout_s=timeout_s,
        )
        assert isinstance(reply, m.LogAppendReply)
        return AppendResult(reply.first_lsn, reply.last_lsn)

    async def append(
        self, log: int, records: bytes | Sequence[bytes], *, timeout_s: float | None = None
    ) -> int:
        """Append ``records`` as one batch; returns the LSN of the last one."""
        return (await self.append_result(log, records, timeout_s=timeout_s)).last_lsn

    async def read(
        self,
        log: int,
        from_lsn: int = 1,
        to_lsn: int | None = None,
        *,
        records_max: int = 1000,
        wait_ms: int = 1000,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[LogItem, None]:
        """Records and gaps of ``log`` from ``from_lsn`` (rule 2)."""
        log = _log_id(log)
        if from_lsn < 1:
            raise BadRequestError(f"from_lsn must be >= 1, got {from_lsn}")
        if to_lsn is not None and to_lsn < from_lsn:
            raise BadRequestError(f"to_lsn ({to_lsn}) must be >= from_lsn ({from_lsn})")
        if records_max < 1 or wait_ms < 0:
            raise BadRequestError("records_max must be >= 1 and wait_ms >= 0")
        # A request waits at the node for at most half an attempt's time, so a tailing
        # read is never taken for an unanswered call (client rule 8).
        wait_ms = min(wait_ms, int(self._client.attempt_timeout_s * 500))
        next_lsn = from_lsn
        end = to_lsn or 0
        while to_lsn is None or next_lsn < to_lsn:
            start = next_lsn
            reply = await self._call(
                m.LogReadReply,
                lambda i, s=start: m.LogRead(
                    id=i,
                    log=log,
                    from_lsn=s,
                    to_lsn=end,
                    records_max=records_max,
                    wait_ms=wait_ms,
                ),
                write=False,
                target=self._client._pick(ANY),
                timeout_s=timeout_s,
            )
            assert isinstance(reply, m.LogReadReply)
            for item in reply.items:
                yield item
            next_lsn = max(next_lsn, reply.next_lsn)
            if reply.done:
                return

    async def find_tail(self, log: int, *, timeout_s: float | None = None) -> TailInfo:
        """The first LSN not yet committed (the next append's LSN, or later), sealed, trim point."""
        log = _log_id(log)
        reply = await self._call(
            m.LogTailReply,
            lambda i: m.LogFindTail(id=i, log=log),
            write=False,
            target=ANY,
            timeout_s=timeout_s,
        )
        assert isinstance(reply, m.LogTailReply)
        return TailInfo(reply.tail, reply.sealed, reply.trim_point)

    async def trim(self, log: int, lsn: int, *, timeout_s: float | None = None) -> TrimResult:
        """Discard records at or below ``lsn`` (clipped to the committed tail)."""
        log = _log_id(log)
        if lsn < 0:
            raise BadRequestError(f"a trim point is >= 0, got {lsn}")
        reply = await self._call(
            m.LogTrimReply,
            lambda i: m.LogTrim(id=i, log=log, lsn=lsn),
            write=False,  # idempotent: trimming twice to a point is trimming once
            target=LEADER,
            timeout_s=timeout_s,
        )
        assert isinstance(reply, m.LogTrimReply)
        return TrimResult(reply.trim_point, reply.segments_dropped)

    async def seal(self, log: int, *, timeout_s: float | None = None) -> int:
        """Seal the log's tail segment; returns its tail.  Appends answer ``SEALED``
        until ``reconfigure``."""
        log = _log_id(log)
        reply = await self._call(
            m.LogTailReply,
            lambda i: m.LogSeal(id=i, log=log),
            write=False,  # idempotent
            target=ANY,
            timeout_s=timeout_s,
        )
        assert isinstance(reply, m.LogTailReply)
        return reply.tail

    async def reconfigure(
        self,
        log: int,
        *,
        provider: str = "",
        replication: str = "",
        sequencer: int = 0,
        timeout_s: float | None = None,
    ) -> LogInfo:
        """Seal the tail segment and continue the log in a new one; returns the log."""
        log = _log_id(log)
        reply = await self._call(
            m.LogDescribeReply,
            lambda i: m.LogReconfigure(
                id=i, log=log, provider=provider, replication=replication, sequencer=sequencer
            ),
            write=True,
            target=LEADER,
            timeout_s=timeout_s if timeout_s is not None else 15.0,
        )
        assert isinstance(reply, m.LogDescribeReply)
        return reply.logs[0]

    async def describe(self, log: int, *, timeout_s: float | None = None) -> LogInfo:
        """The log's chain: each segment's provider, replication, sequencer, nodeset, LSNs."""
        log = _log_id(log)
        reply = await self._call(
            m.LogDescribeReply,
            lambda i: m.LogDescribe(id=i, log=log),
            write=False,
            target=ANY,
            timeout_s=timeout_s,
        )
        assert isinstance(reply, m.LogDescribeReply)
        return reply.logs[0]

    async def list(self, *, timeout_s: float | None = None) -> tuple[LogInfo, ...]:
        """Every log the node knows."""
        reply = await self._call(
            m.LogDescribeReply,
            lambda i: m.LogDescribe(id=i, log=-1),
            write=False,
            target=ANY,
            timeout_s=timeout_s,
        )
        assert isinstance(reply, m.LogDescribeReply)
        return reply.logs

    def appender(
        self, log: int, *, batch_records_max: int = 1024, inflight_max: int = 8
    ) -> Appender:
        """An ``Appender`` that batches concurrent callers' records (rule 3)."""
        return Appender(self, _log_id(log), batch_records_max, inflight_max)


class Appender:
    """Batches many callers' records into one append request each (rule 3).

    ``await appender.append(record)`` returns the record's LSN.  Records of
    one request share its outcome: an error fails every caller of the batch.
    """

    def __init__(self, logs: LogsClient, log: int, batch_records_max: int, inflight_max: int):
        if batch_records_max < 1 or inflight_max < 1:
            raise BadRequestError("batch_records_max and inflight_max must be >= 1")
        self._logs = logs
        self.log = log
        self.batch_records_max = batch_records_max
        self.inflight_max = inflight_max
        self._queue: deque[tuple[bytes, asyncio.Future[int]]] = deque()
        self._inflight = 0
        self._closed = False
        self.requests = 0

    async def append(self, record: bytes) -> int:
        if self._closed:
            raise CatenaryError("the appender is closed")
        (payload,) = _payloads(record)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((payload, future))
        self._flush()
        return await future

    def _flush(self) -> None:
        while self._queue and self._inflight < self.inflight_max:
            count = min(self.batch_records_max, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            self._inflight += 1
            self.requests += 1
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[int]]]) -> None:
        try:
            result = await self._logs.append_result(self.log, [p for p, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for i, (_, future) in enumerate(batch):
                if not future.done():
                    future.set_result(result.first_lsn + i)
        finally:
            self._inflight -= 1
            self._flush()

    async def aclose(self) -> None:
        self._closed = True


__all__ = [
    "AppendResult",
    "Appender",
    "LogGap",
    "LogInfo",
    "LogItem",
    "LogRecord",
    "LogsClient",
    "SealedError",
    "TailInfo",
    "TrimResult",
]
