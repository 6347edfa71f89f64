"""The asyncio client of catenary.

Theory of operation
-------------------
1. The client knows a list of node addresses (any node will do) and keeps at
   most one connection per node, multiplexed by request id.  It remembers the
   address of the node it believes is the metadata leader.
2. Requests that must reach the leader (writes, linearizable reads, leases,
   membership) go to the believed leader, or else to the next known address.
   A follower answers ``NOT_LEADER`` with the leader's client address when it
   knows it; the client retries there at once.  Without a hint it moves on to
   the next address after a backoff.
3. Every call has a deadline (``timeout_s``).  Retries happen only before it,
   with exponential, jittered, bounded backoff (``backoff_initial_ms`` ..
   ``backoff_max_ms``), and only while at least ``retry_time_min_s`` of it is
   left: a later attempt could not be answered in time, and a write left in
   flight at the deadline is indeterminate although every earlier answer said it
   did not happen.  The call then ends as at the deadline with nothing in
   flight (rule 6).
4. Reads (and idempotent requests: keep-alive, provision, status) are retried
   on any transient failure, each attempt bounded by ``attempt_timeout_s``.
5. A write is retried only when it surely did not happen: the connection
   failed before the request was written, or the node answered
   ``NOT_LEADER``, ``UNAVAILABLE``, ``OVERLOADED`` or ``DISK_FULL``.  When the outcome is
   unknown -- the connection was lost after sending, the node answered
   ``INDETERMINATE``, or the deadline passed while the write was in flight --
   the client raises ``IndeterminateError``, never a plain failure.
6. When the deadline passes with nothing in flight the client raises
   ``DeadlineExceededError`` (an ``UnavailableError`` and a ``TimeoutError``):
   the request did not take effect.
7. A watch never goes back in time: after a lost connection it resubscribes
   from the last revision it delivered (subscriptions "from now", made before
   the first batch arrived, resume from now).  Its buffer is bounded
   (``watch_queue_max`` batches); a consumer that falls behind is unsubscribed
   and resubscribed from its last revision once it catches up, so a slow
   consumer costs the node nothing.
8. A stalled connection is abandoned, never waited on.  Dialing one address
   (connect and handshake) is bounded by ``connect_timeout_s``, whatever the
   call's deadline, so the next address still gets its turn.  A read attempt
   unanswered within ``attempt_timeout_s`` on a connection that heard nothing
   from the node meanwhile retires that connection (what is in flight on it
   may still finish) and the next attempt goes to another node, or dials
   anew; so does any call that finds its connection has owed an answer for
   ``attempt_timeout_s`` already.  Each connection also pings a silent node
   (``ping_interval_s``) and closes after ``idle_timeout_s`` of silence
   (``catenary.client.connection``, rule 6).  When another address remains
   to try, one dial may take at most half of what is left of the deadline.
9. Calls bound for the leader (when none is known) or for any node pass
   over addresses whose dial is still in progress (started by another call or
   by ``connect``) and go to the next one connected or not yet dialed.
   ``connect()`` dials every address at once, so a tool that names several
   nodes pays for an unreachable one only in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from catenary.api import messages as m
from catenary.api.types import (
    Compacted,
    Done,
    Event,
    KeyValue,
    LeaseGranted,
    LeaseNotFound,
    Precondition,
    PreconditionFailed,
    Written,
)
from catenary.client.connection import (
    FRAME_BYTES_MAX_DEFAULT,
    IDLE_TIMEOUT_S_DEFAULT,
    PING_INTERVAL_S_DEFAULT,
    WRITE_BATCH_MAX_DEFAULT,
    ConnectionLostError,
    NodeConnection,
    NotSentError,
    parse_address,
)
from catenary.client.errors import (
    BadRequestError,
    CatenaryError,
    CompactedError,
    ConnectionRefusedByNodeError,
    DeadlineExceededError,
    DiskFullError,
    IndeterminateError,
    InternalError,
    KeyNotFoundError,
    LeaseNotFoundError,
    NotCatenaryNodeError,
    NotFoundError,
    OverloadedError,
    PreconditionFailedError,
    RefusedError,
    SealedError,
    TooLargeError,
    UnavailableError,
    check_text,
)
from catenary.client.logs import LogsClient

ReplyT = TypeVar("ReplyT")


class Policy(enum.Enum):
    READ = "read"  # retried on any transient failure
    WRITE = "write"  # retried only when it surely did not happen


LEADER = "leader"  # target: the metadata leader
ANY = "any"  # target: any node (stale reads, status)

_RETRYABLE = frozenset(
    {
        m.ErrorCode.NOT_LEADER,
        m.ErrorCode.UNAVAILABLE,
        m.ErrorCode.OVERLOADED,
        m.ErrorCode.DISK_FULL,
        m.ErrorCode.SEALED,
    }
)


class _NoAnswerError(Exception):
    """The attempt's time ran out with the request still unanswered."""


def _expire(future: asyncio.Future[m.Reply]) -> None:
    if not future.done():
        future.set_exception(_NoAnswerError())


class _Deadlines:
    """First-attempt deadlines without a timer per request.

    A first attempt always waits the same duration (the call's timeout, or the
    attempt timeout for a read), so the deadlines of one duration come in the
    order the requests were sent: one FIFO per duration.  Answered requests
    leave a FIFO when they reach its head, on the next ``add`` to it (so a FIFO
    holds little more than the requests still waiting) or at a sweep.  One
    timer sweeps when the earliest head's deadline is due (never more often
    than every ``resolution_s``) and fails the futures whose deadline passed: a
    deadline fires at most ``resolution_s`` late, and a client whose requests
    are answered in time wakes for no sweep in between.
    """

    def __init__(self, resolution_s: float) -> None:
        self._resolution_s = resolution_s
        self._fifos: dict[float, deque[tuple[float, asyncio.Future[m.Reply]]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the timer runs

    def add(
        self, loop: asyncio.AbstractEventLoop, duration_s: float, future: asyncio.Future[m.Reply]
    ) -> None:
        fifo = self._fifos.get(duration_s)
        if fifo is None:
            fifo = self._fifos[duration_s] = deque()
        else:
            while fifo and fifo[0][1].done():
                fifo.popleft()
        deadline = loop.time() + duration_s
        fifo.append((deadline, future))
        if self._timer is None or deadline < self._due - self._resolution_s:
            # None runs, or it runs after this deadline (a shorter duration).
            if self._timer is not None:
                self._timer.cancel()
            self._arm(loop, deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._due = max(due, loop.time() + self._resolution_s)
        self._timer = loop.call_at(self._due, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        earliest: float | None = None
        for duration_s, fifo in list(self._fifos.items()):
            while fifo:
                deadline, future = fifo[0]
                if not future.done():
                    if deadline > now:
                        if earliest is None or deadline < earliest:
                            earliest = deadline
                        break
                    future.set_exception(_NoAnswerError())
                fifo.popleft()
            if not fifo:
                del self._fifos[duration_s]  # (callers may use many distinct timeouts)
        if earliest is not None:
            self._arm(loop, earliest)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fifos.clear()


@dataclass(frozen=True)
class ListResult:
    kvs: tuple[KeyValue, ...]
    revision: int  # applied revision of the member that answered
    more: bool  # truncated by the limit


@dataclass(frozen=True)
class GetResult:
    kv: KeyValue | None
    revision: int
    behind: int  # stale reads: entries the member knows it has not applied yet


@dataclass(frozen=True)
class ServerSet:
    members: tuple[m.RaftMember, ...]
    leader: int


def split_addresses(addresses: str | Sequence[str]) -> list[str]:
    """Accept ``"a:1,b:2"`` or ``["a:1", "b:2,c:3"]``; validate each; keep order, drop repeats."""
    items = [addresses] if isinstance(addresses, str) else list(addresses)
    for item in items:
        check_text("address", item)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            parse_address(part)  # raises BadRequestError (a ValueError) with the reason
            if part not in out:
                out.append(part)
    if not out:
        raise BadRequestError("no node address given")
    return out


def error_for(reply: m.ErrorReply) -> CatenaryError:
    """The typed error for a node's ``ErrorReply``."""
    text = reply.message or reply.code
    match reply.code:
        case m.ErrorCode.BAD_REQUEST:
            return BadRequestError(text)
        case m.ErrorCode.TOO_LARGE:
            return TooLargeError(text)
        case m.ErrorCode.NOT_FOUND:
            return NotFoundError(text)
        case m.ErrorCode.REFUSED:
            return RefusedError(text)
        case m.ErrorCode.INDETERMINATE:
            return IndeterminateError(text)
        case m.ErrorCode.OVERLOADED:
            return OverloadedError(text)
        case m.ErrorCode.DISK_FULL:
            return DiskFullError(text)
        case m.ErrorCode.SEALED:
            return SealedError(text)
        case m.ErrorCode.UNAVAILABLE | m.ErrorCode.NOT_LEADER:
            return UnavailableError(text)
        case _:
            return InternalError(f"{reply.code}: {text}")


def _require_str(argument: str, value: object) -> None:
    """A cheap type check for the hot paths; text with no UTF-8 form is found
    when the request is encoded (``NodeConnection``), before anything is sent."""
    if not isinstance(value, str):
        raise BadRequestError(f"{argument} must be a str, got {type(value).__name__}")


def _precondition(*, if_absent: bool = False, if_version: int | None = None) -> Precondition:
    if if_absent and if_version is not None:
        raise BadRequestError("give at most one of if_absent and if_version")
    if if_absent:
        return Precondition(kind="absent")
    if if_version is not None:
        if if_version < 0:
            raise BadRequestError(f"if_version must be >= 0, got {if_version}")
        # Version 0 means "absent": the same condition, said the way the store says it.
        if if_version == 0:
            return Precondition(kind="absent")
        return Precondition(kind="version", version=if_version)
    return Precondition()


class Client:
    """An asyncio client for any node of one catenary cluster.

    Use as ``async with Client(["127.0.0.1:7001"]) as client: ...`` or call
    ``close()`` when done.  Every method takes an optional ``timeout_s`` that
    overrides the client's default deadline for that call.
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        cluster_name: str | None = None,
        timeout_s: float = 5.0,
        attempt_timeout_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        backoff_initial_ms: int = 10,
        backoff_max_ms: int = 250,
        retry_time_min_s: float = 0.2,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        pending_max: int = 65536,
        watch_queue_max: int = 1024,
        deadline_resolution_s: float = 0.01,
        write_batch_max: int = WRITE_BATCH_MAX_DEFAULT,
        ping_interval_s: float = PING_INTERVAL_S_DEFAULT,
        idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (
            ("timeout_s", timeout_s),
            ("attempt_timeout_s", attempt_timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("deadline_resolution_s", deadline_resolution_s),
            ("ping_interval_s", ping_interval_s),
        ):
            if not value > 0:
                raise BadRequestError(f"{name} must be > 0, got {value}")
        if not idle_timeout_s > ping_interval_s:
            raise BadRequestError(
                f"idle_timeout_s ({idle_timeout_s}) must exceed ping_interval_s ({ping_interval_s})"
            )
        self.ping_interval_s = ping_interval_s
        self.idle_timeout_s = idle_timeout_s
        if backoff_initial_ms <= 0 or backoff_max_ms < backoff_initial_ms:
            raise BadRequestError("need 0 < backoff_initial_ms <= backoff_max_ms")
        if not retry_time_min_s >= 0:
            raise BadRequestError(f"retry_time_min_s must be >= 0, got {retry_time_min_s}")
        self.retry_time_min_s = retry_time_min_s
        if frame_bytes_max <= 0 or pending_max <= 0 or watch_queue_max <= 0:
            raise BadRequestError("frame_bytes_max, pending_max and watch_queue_max must be > 0")
        if write_batch_max <= 0:
            raise BadRequestError(f"write_batch_max must be > 0, got {write_batch_max}")
        self.write_batch_max = write_batch_max
        self.addresses = split_addresses(addresses)
        self.cluster_name = check_text("cluster_name", cluster_name or "")
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_ms = backoff_initial_ms
        self.backoff_max_ms = backoff_max_ms
        self.frame_bytes_max = frame_bytes_max
        self.pending_max = pending_max
        self.watch_queue_max = watch_queue_max
        self._rng = rng if rng is not None else random.Random()
        self._conns: dict[str, NodeConnection] = {}
        self._dialing: dict[str, asyncio.Task[NodeConnection]] = {}
        self._leader: str | None = None
        self._cursor = 0
        self._closed = False
        self._deadlines = _Deadlines(deadline_resolution_s)
        self.metadata = MetadataClient(self)
        self.logs = LogsClient(self)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._dialing.values()):
            task.cancel()
        for task in list(self._dialing.values()):
            with contextlib.suppress(BaseException):
                await task
        for conn in list(self._conns.values()):
            conn.close("client closed")
        self._conns.clear()
        self._deadlines.close()

    @property
    def leader_address(self) -> str | None:
        """The client address of the node believed to be the metadata leader."""
        return self._leader

    # ---------------------------------------------------------- connections

    async def _connection(self, address: str) -> NodeConnection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed and not conn.retiring:
            return conn
        if self._closed:
            raise NotSentError("client closed")
        task = self._dialing.get(address)
        if task is None:
            # One dial per node even when many callers need it at once.
            task = asyncio.get_running_loop().create_task(
                NodeConnection.open(
                    address,
                    cluster_name=self.cluster_name,
                    connect_timeout_s=self.connect_timeout_s,
                    frame_bytes_max=self.frame_bytes_max,
                    pending_max=self.pending_max,
                    write_batch_max=self.write_batch_max,
                    ping_interval_s=self.ping_interval_s,
                    idle_timeout_s=self.idle_timeout_s,
                )
            )
            self._dialing[address] = task
            task.add_done_callback(lambda t: self._dialed(address, t))
        return await asyncio.shield(task)

    def _dialed(self, address: str, task: asyncio.Task[NodeConnection]) -> None:
        self._dialing.pop(address, None)
        if task.cancelled() or task.exception() is not None:
            return
        conn = task.result()
        if self._closed:
            conn.close("client closed")
            return
        if not self.cluster_name:
            # Learnt from the first node; every later node must be of the same cluster.
            self.cluster_name = conn.peer_cluster_name
        self._conns[address] = conn

    def _abandon(self, address: str, conn: NodeConnection, reason: str) -> None:
        """Rule 8: stop using a connection that seems stalled; the next call dials anew."""
        if self._conns.get(address) is conn:
            del self._conns[address]
        conn.retire(reason)

    def _pick(self, target: str) -> str:
        if target == LEADER and self._leader is not None:
            return self._leader
        if target in (LEADER, ANY):
            # Rule 9: from the cursor on, pass over nodes still being dialed.
            count = len(self.addresses)
            for step in range(count):
                address = self.addresses[(self._cursor + step) % count]
                conn = self._conns.get(address)
                if (
                    conn is not None and not conn.closed and not conn.retiring
                ) or address not in self._dialing:
                    self._cursor += step
                    return address
            return self.addresses[self._cursor % count]
        return target

    def _connect_bound(self, target: str, remaining: float) -> float:
        """Rule 8: how long one dial may take; half the rest when another address remains."""
        bound = min(remaining, self.connect_timeout_s)
        if target in (LEADER, ANY) and len(self.addresses) > 1:
            bound = min(bound, remaining / 2)
        return bound

    async def connect(self, *, timeout_s: float | None = None) -> list[str]:
        """Dial every known address at once; return those connected (rule 9).

        Returns as soon as one node is connected (the others keep dialing in
        the background and join when they answer), or when all have failed or
        ``timeout_s`` (default: the client's deadline) passed.  Later calls
        then start at a connected node, so an unreachable address costs them
        nothing.  Raises ``UnavailableError`` if no node could be reached.
        """
        loop = asyncio.get_running_loop()
        total_s = timeout_s if timeout_s is not None else self.timeout_s
        deadline = loop.time() + total_s
        failures: dict[str, BaseException] = {}

        async def dial(address: str) -> str:
            try:
                async with asyncio.timeout(min(self.connect_timeout_s, total_s)):
                    await self._connection(address)
            except (NotSentError, TimeoutError, CatenaryError) as exc:
                failures[address] = exc
                raise
            return address

        tasks = [loop.create_task(dial(a)) for a in self.addresses]
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(
                    pending,
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done or any(not t.exception() for t in done):
                    break
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()  # the dial itself goes on, shielded (``_connection``)
            await asyncio.gather(*tasks, return_exceptions=True)
        connected = [a for a in self.addresses if a in self._conns and not self._conns[a].closed]
        if not connected:
            for exc in failures.values():
                if isinstance(exc, ConnectionRefusedByNodeError):
                    raise exc  # e.g. another cluster: a usage error, not unavailability
            detail = "; ".join(
                f"{a}: {str(failures[a]) or 'connect timed out'}"
                if a in failures
                else f"{a}: no answer"
                for a in self.addresses
            )
            raise UnavailableError(f"no node reachable: {detail}")
        return connected

    def _failed(self, address: str) -> None:
        """``address`` could not serve: forget it as leader and move on."""
        if self._leader == address:
            self._leader = None
        if (
            address in self.addresses
            and self.addresses[self._cursor % len(self.addresses)] == address
        ):
            self._cursor += 1

    async def _backoff(self, attempt: int, deadline: float) -> None:
        delay_ms = min(self.backoff_max_ms, self.backoff_initial_ms * (2 ** min(attempt, 16)))
        delay_s = delay_ms * (0.5 + self._rng.random() / 2) / 1000
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, min(delay_s, deadline - loop.time())))

    # -------------------------------------------------------------- invoke

    async def _invoke(
        self,
        build: Callable[[int], m.Request],
        *,
        policy: Policy,
        target: str = LEADER,
        timeout_s: float | None = None,
    ) -> m.Reply:
        """Send ``build(id)`` with the retry policy; return a reply that is not an error."""
        loop = asyncio.get_running_loop()
        total_s = timeout_s if timeout_s is not None else self.timeout_s
        deadline = loop.time() + total_s
        first_wait_s = min(total_s, self.attempt_timeout_s) if policy is Policy.READ else total_s
        attempt = 0
        redirects = 0
        last = "no attempt made"
        last_disk_full = False  # the last failure was a node's full disk
        last_sealed = False  # the last failure was a sealed log that took no new segment
        not_catenary: set[str] = set()  # addresses that answered as something else
        while True:
            remaining = deadline - loop.time()
            # Rule 3: no retry that the deadline leaves no time to answer.
            if remaining <= 0 or ((attempt or redirects) and remaining < self.retry_time_min_s):
                if last_disk_full:
                    raise DiskFullError(
                        f"deadline passed or too close to retry; last failure: {last}"
                    )
                if last_sealed:
                    raise SealedError(
                        f"deadline passed or too close to retry; last failure: {last}"
                    )
                raise DeadlineExceededError(
                    f"deadline passed or too close to retry; last failure: {last}"
                )
            last_disk_full = last_sealed = False
            address = self._pick(target)
            # 1. connect: a failure here means nothing was sent.
            try:
                conn_or_none = self._conns.get(address)
                dialed = False
                if (
                    conn_or_none is not None
                    and conn_or_none.owed_for(loop.time()) >= self.attempt_timeout_s
                ):
                    self._abandon(
                        address,
                        conn_or_none,
                        f"no answer for {self.attempt_timeout_s}s (attempt_timeout_s)",
                    )
                    conn_or_none = None
                if conn_or_none is None or conn_or_none.closed:
                    dialed = True
                    async with asyncio.timeout(self._connect_bound(target, remaining)):
                        conn_or_none = await self._connection(address)
                conn = conn_or_none
                future = conn.call(build)
            except (NotSentError, TimeoutError) as exc:
                last = str(exc) or f"{address}: connect timed out"
                self._failed(address)
                await self._backoff(attempt, deadline)
                attempt += 1
                continue
            except NotCatenaryNodeError as exc:
                not_catenary.add(address)
                if not_catenary.issuperset(self.addresses):
                    raise  # no address is a node: retrying cannot help
                last = str(exc)  # another address may be a node
                self._failed(address)
                await self._backoff(attempt, deadline)
                attempt += 1
                continue
            except ConnectionRefusedByNodeError:
                raise
            # 2. in flight: from here a write's outcome is unknown until answered.
            request_id = conn.last_request_id
            sent_at = loop.time()
            timer: asyncio.TimerHandle | None = None
            if attempt == 0 and redirects == 0 and not dialed:
                # Sent at once: the attempt's deadline is first_wait_s from now.
                wait_s = first_wait_s
                self._deadlines.add(loop, wait_s, future)
            else:
                wait_s = deadline - loop.time()
                if policy is Policy.READ:
                    wait_s = min(wait_s, self.attempt_timeout_s)
                timer = loop.call_later(max(wait_s, 0.0), _expire, future)
            try:
                reply = await future
            except _NoAnswerError:
                if policy is Policy.WRITE:
                    raise IndeterminateError(
                        f"{address}: no answer before the deadline; the write may or may not "
                        "have been applied"
                    ) from None
                last = f"{address}: no answer in {wait_s:.3f}s"
                if conn.last_heard <= sent_at:
                    self._abandon(address, conn, f"nothing heard for {wait_s:.3f}s")
                self._failed(address)
                attempt += 1
                continue
            except NotSentError as exc:  # closed before the frame left: safe to retry
                last = str(exc)
                self._failed(address)
                await self._backoff(attempt, deadline)
                attempt += 1
                continue
            except ConnectionLostError as exc:
                if policy is Policy.WRITE:
                    raise IndeterminateError(
                        f"{exc}; the write was sent and may or may not have been applied"
                    ) from None
                last = str(exc)
                self._failed(address)
                await self._backoff(attempt, deadline)
                attempt += 1
                continue
            finally:
                if timer is not None:
                    timer.cancel()
                conn.forget(request_id)
            if not isinstance(reply, m.ErrorReply):
                if target == LEADER:
                    self._leader = address
                return reply
            # 3. the node answered with an error.
            if reply.code == m.ErrorCode.NOT_LEADER:
                last = f"{address}: not the leader ({reply.message})"
                if reply.leader_address and reply.leader_address != address:
                    self._leader = reply.leader_address
                    redirects += 1
                    if redirects > 1:
                        # Hints can chase an election in progress: slow down.
                        await self._backoff(attempt, deadline)
                        attempt += 1
                    continue
                self._failed(address)
                await self._backoff(attempt, deadline)
                attempt += 1
                continue
            if reply.code in _RETRYABLE or (
                reply.code == m.ErrorCode.INDETERMINATE and policy is Policy.READ
            ):
                last = f"{address}: {reply.code}: {reply.message}"
                last_disk_full = reply.code == m.ErrorCode.DISK_FULL
                last_sealed = reply.code == m.ErrorCode.SEALED
                if reply.code in (m.ErrorCode.UNAVAILABLE, m.ErrorCode.DISK_FULL):
                    self._failed(address)
                await self._backoff(attempt, deadline)
                attempt += 1
                continue
            raise error_for(reply)

    async def _expect(
        self,
        kind: type[ReplyT],
        build: Callable[[int], m.Request],
        *,
        policy: Policy,
        target: str = LEADER,
        timeout_s: float | None = None,
    ) -> ReplyT:
        reply = await self._invoke(build, policy=policy, target=target, timeout_s=timeout_s)
        if not isinstance(reply, kind):
            raise InternalError(f"unexpected reply {type(reply).__name__}, wanted {kind.__name__}")
        return reply

    # ------------------------------------------------------------- cluster

    async def status(
        self, address: str | None = None, *, timeout_s: float | None = None
    ) -> m.NodeStatus:
        """The status of the node at ``address`` (default: any reachable node)."""
        if address is not None:
            parse_address(address)
        reply = await self._expect(
            m.StatusReply,
            lambda i: m.GetStatus(id=i),
            policy=Policy.READ,
            target=address if address is not None else ANY,
            timeout_s=timeout_s,
        )
        return reply.status

    async def nodes(self, *, timeout_s: float | None = None) -> tuple[m.NodeInfo, ...]:
        """Every registered node with its addresses and state."""
        reply = await self._expect(
            m.NodesReply, lambda i: m.ListNodes(id=i), policy=Policy.READ, timeout_s=timeout_s
        )
        return reply.nodes

    async def servers(self, *, timeout_s: float | None = None) -> ServerSet:
        """Members of the metadata Raft group, as the leader sees them."""
        reply = await self._expect(
            m.ServersReply, lambda i: m.ListServers(id=i), policy=Policy.READ, timeout_s=timeout_s
        )
        return ServerSet(members=reply.members, leader=reply.leader)

    async def add_server(self, node: int, *, timeout_s: float | None = None) -> str:
        """Add a node to the metadata group as a learner (promoted once caught up)."""
        reply = await self._expect(
            m.OkReply,
            lambda i: m.AddServer(id=i, node=node),
            policy=Policy.WRITE,
            timeout_s=timeout_s,
        )
        return reply.detail

    async def remove_server(self, node: int, *, timeout_s: float | None = None) -> str:
        """Remove a node from the metadata group (refused if it would lose quorum)."""
        reply = await self._expect(
            m.OkReply,
            lambda i: m.RemoveServer(id=i, node=node),
            policy=Policy.WRITE,
            timeout_s=timeout_s,
        )
        return reply.detail

    async def provision(self, cluster_name: str = "", *, timeout_s: float | None = None) -> str:
        """Provision the cluster (idempotent)."""
        check_text("cluster_name", cluster_name)
        reply = await self._expect(
            m.OkReply,
            lambda i: m.Provision(id=i, cluster_name=cluster_name),
            policy=Policy.READ,  # idempotent: safe to repeat
            target=ANY,
            timeout_s=timeout_s,
        )
        return reply.detail


class MetadataClient:
    """The metadata service: a versioned key-value store with leases and watches."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def get(
        self, key: str, *, stale: bool = False, timeout_s: float | None = None
    ) -> KeyValue | None:
        """The key's value and version, or None; linearizable unless ``stale``."""
        return await self._get_kv(key, stale, timeout_s)

    async def get_result(
        self, key: str, *, stale: bool = False, timeout_s: float | None = None
    ) -> GetResult:
        """Like ``get`` with the answering member's revision (and lag, for stale reads)."""
        _require_str("key", key)
        reply = await self._client._expect(
            m.GetReply,
            lambda i: m.Get(id=i, key=key, stale=stale),
            policy=Policy.READ,
            target=ANY if stale else LEADER,
            timeout_s=timeout_s,
        )
        return GetResult(kv=reply.kv, revision=reply.revision, behind=reply.behind)

    async def _get_kv(self, key: str, stale: bool, timeout_s: float | None) -> KeyValue | None:
        # ``get`` without the layers of ``get_result``/``_expect``: the hot path.
        _require_str("key", key)
        reply = await self._client._invoke(
            lambda i: m.Get(id=i, key=key, stale=stale),
            policy=Policy.READ,
            target=ANY if stale else LEADER,
            timeout_s=timeout_s,
        )
        if not isinstance(reply, m.GetReply):
            raise InternalError(f"unexpected reply {type(reply).__name__}, wanted GetReply")
        return reply.kv

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
        lease: int = 0,
        timeout_s: float | None = None,
    ) -> int:
        """Write ``value``; returns the new version.

        Raises ``PreconditionFailedError`` (with the current version) when a
        condition does not hold, ``LeaseNotFoundError`` for an unknown lease,
        ``IndeterminateError`` when the outcome is unknown.
        """
        _require_str("key", key)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise BadRequestError(f"value must be bytes, got {type(value).__name__}")
        precondition = _precondition(if_absent=if_absent, if_version=if_version)
        data = value if type(value) is bytes else bytes(value)
        reply = await self._client._invoke(
            lambda i: m.Put(id=i, key=key, value=data, precondition=precondition, lease=lease),
            policy=Policy.WRITE,
            timeout_s=timeout_s,
        )
        if not isinstance(reply, m.WriteReply):
            raise InternalError(f"unexpected reply {type(reply).__name__}, wanted WriteReply")
        return _written(reply.result, key, lease)

    async def delete(
        self, key: str, *, if_version: int | None = None, timeout_s: float | None = None
    ) -> int:
        """Delete the key; returns the revision of the delete.

        Raises ``KeyNotFoundError`` when the key is absent: the delete changed
        nothing and spent no revision."""
        _require_str("key", key)
        precondition = _precondition(if_version=if_version)
        reply = await self._client._expect(
            m.WriteReply,
            lambda i: m.Delete(id=i, key=key, precondition=precondition),
            policy=Policy.WRITE,
            timeout_s=timeout_s,
        )
        if isinstance(reply.result, Written) and reply.result.absent:
            raise KeyNotFoundError(key, reply.result.version)
        return _written(reply.result, key, 0)

    async def list(
        self,
        prefix: str,
        limit: int = 0,
        *,
        stale: bool = False,
        timeout_s: float | None = None,
    ) -> ListResult:
        """Keys starting with ``prefix`` in key order (``limit`` 0: no limit)."""
        _require_str("prefix", prefix)
        if limit < 0:
            raise BadRequestError(f"limit must be >= 0, got {limit}")
        reply = await self._client._expect(
            m.ListReply,
            lambda i: m.List(id=i, prefix=prefix, stale=stale, limit=limit),
            policy=Policy.READ,
            target=ANY if stale else LEADER,
            timeout_s=timeout_s,
        )
        return ListResult(kvs=reply.kvs, revision=reply.revision, more=reply.more)

    def watch(self, key: str, prefix: bool = False, from_version: int = 0) -> Watcher:
        """An async iterator of changes to ``key`` (or every key under it when ``prefix``).

        ``from_version`` 0 means "from now"; otherwise changes with a version
        above it.  Raises ``CompactedError`` when that history is gone.
        """
        check_text("key", key)
        if from_version < 0:
            raise BadRequestError(f"from_version must be >= 0, got {from_version}")
        return Watcher(self._client, key, prefix=prefix, from_version=from_version)

    # -------------------------------------------------------------- leases

    async def grant(self, ttl_ms: int, *, timeout_s: float | None = None) -> int:
        """A new lease of ``ttl_ms``; returns its id."""
        if ttl_ms <= 0:
            raise BadRequestError(f"ttl_ms must be > 0, got {ttl_ms}")
        reply = await self._client._expect(
            m.WriteReply,
            lambda i: m.GrantLease(id=i, ttl_ms=ttl_ms),
            policy=Policy.WRITE,
            timeout_s=timeout_s,
        )
        result = reply.result
        if not isinstance(result, LeaseGranted):
            raise InternalError(f"unexpected result {type(result).__name__} to a lease grant")
        return result.lease

    async def keep_alive(self, lease: int, *, timeout_s: float | None = None) -> None:
        """Restart the lease's TTL; raises ``LeaseNotFoundError`` if it is gone."""
        reply = await self._client._invoke(
            lambda i: m.KeepAlive(id=i, lease=lease),
            policy=Policy.READ,  # idempotent: one more keep-alive changes nothing
            timeout_s=timeout_s,
        )
        _lease_done(reply, lease)

    async def revoke(self, lease: int, *, timeout_s: float | None = None) -> None:
        """Revoke the lease and delete its keys."""
        reply = await self._client._invoke(
            lambda i: m.RevokeLease(id=i, lease=lease),
            policy=Policy.WRITE,
            timeout_s=timeout_s,
        )
        _lease_done(reply, lease)


def _written(result: object, key: str, lease: int) -> int:
    if isinstance(result, Written):
        return result.version
    if isinstance(result, PreconditionFailed):
        raise PreconditionFailedError(result.key or key, result.current_version)
    if isinstance(result, LeaseNotFound):
        raise LeaseNotFoundError(result.lease or lease)
    raise InternalError(f"unexpected write result {type(result).__name__}")


def _lease_done(reply: m.Reply, lease: int) -> None:
    if isinstance(reply, m.OkReply):
        return
    if isinstance(reply, m.WriteReply):
        if isinstance(reply.result, LeaseNotFound):
            raise LeaseNotFoundError(lease)
        if isinstance(reply.result, Done | Written | LeaseGranted):
            return
    raise InternalError(f"unexpected reply {type(reply).__name__} to a lease request")


class Watcher:
    """An async iterator of ``Event``s; ``revision`` is the revision delivered so far.

    Close it with ``aclose()`` (or use ``async with``) to stop the watch.
    """

    def __init__(self, client: Client, key: str, *, prefix: bool, from_version: int) -> None:
        self._client = client
        self.key = key
        self.prefix = prefix
        self.revision = from_version
        self._events: deque[Event] = deque()
        self._inbox: deque[m.Reply | None] = deque()
        self._wake = asyncio.Event()
        self._conn: NodeConnection | None = None
        self._watch_id = 0
        self._lagging = False
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __aenter__(self) -> Watcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the watch; an iteration waiting in another task ends (StopAsyncIteration)."""
        self._closed = True
        self._unsubscribe()
        self._wake.set()

    def _closing(self) -> bool:
        """Whether ``aclose()`` has run (a call, so it is read afresh after each await)."""
        return self._closed

    def _unsubscribe(self) -> None:
        if self._conn is not None:
            self._conn.unwatch(self._watch_id, lambda i: m.CancelWatch(id=i))
        self._conn = None
        self._inbox.clear()

    def _listener(self, conn: NodeConnection) -> Callable[[m.Reply | None], None]:
        def deliver(reply: m.Reply | None) -> None:
            if conn is not self._conn or self._lagging:
                return
            self._inbox.append(reply)
            self._wake.set()
            if len(self._inbox) > self._client.watch_queue_max:
                # Too far behind: stop the stream, resume from our revision later.
                self._lagging = True
                self._unsubscribe()

        return deliver

    async def _subscribe(self) -> None:
        client = self._client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + client.timeout_s
        attempt = 0
        last = "no attempt made"
        while True:
            if self._closing():
                return  # closed while dialling or backing off: no watch to start
            if loop.time() >= deadline:
                raise DeadlineExceededError(f"could not start the watch; last failure: {last}")
            address = client._pick(LEADER)
            try:
                async with asyncio.timeout(
                    max(0.0, min(deadline - loop.time(), client.connect_timeout_s))
                ):
                    conn = await client._connection(address)
                if self._closing():
                    return  # aclose() ran during the dial: sending the watch would leak it
                self._conn = conn
                self._watch_id = conn.watch(
                    lambda i: m.Watch(
                        id=i, key=self.key, prefix=self.prefix, from_version=self.revision
                    ),
                    self._listener(conn),
                )
                return
            except (NotSentError, TimeoutError) as exc:
                self._conn = None
                last = str(exc) or f"{address}: connect timed out"
                client._failed(address)
                await client._backoff(attempt, deadline)
                attempt += 1

    async def __anext__(self) -> Event:
        attempt = 0
        while True:
            if self._events:
                event = self._events.popleft()
                return event
            if self._closed or self._client._closed:
                raise StopAsyncIteration
            if self._conn is None and not self._inbox:
                self._lagging = False
                await self._subscribe()
                continue  # aclose() may have run meanwhile: check again before waiting
            if not self._inbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            reply = self._inbox.popleft()
            if reply is None:  # connection lost: resubscribe from our revision
                self._conn = None
                continue
            if isinstance(reply, m.ErrorReply):
                address = self._conn.address if self._conn is not None else ""
                self._unsubscribe()
                if reply.code in _RETRYABLE:
                    if reply.leader_address and reply.leader_address != address:
                        self._client._leader = reply.leader_address
                    else:
                        self._client._failed(address)
                        loop = asyncio.get_running_loop()
                        await self._client._backoff(attempt, loop.time() + 1.0)
                        attempt += 1
                    continue
                self._closed = True
                raise error_for(reply)
            if not isinstance(reply, m.WatchReply):
                continue
            batch = reply.batch
            if isinstance(batch, Compacted):
                self._closed = True
                self._unsubscribe()
                raise CompactedError(batch.oldest_version, batch.revision)
            attempt = 0
            for event in batch.events:
                if event.version > self.revision:  # never back in time
                    self._events.append(event)
            self.revision = max(self.revision, batch.revision)
