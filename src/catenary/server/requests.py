"""The path of a client request through a node: validate, then dispatch to a service.

Rules:

1. Every request is validated here, once, before any service sees it: keys
   are non-empty and within ``metadata.key_bytes_max``, values within
   ``metadata.value_bytes_max``, list limits within ``metadata.list_limit_max``.
   Client writes under ``/catenary/`` are refused: only the nodes write their
   system keys.
2. Keys, leases and watches go to the metadata service; provisioning, joins,
   node lists and member changes to the membership service; status is the
   metadata service's.
3. Gets and puts that arrived together on one connection (client port rule 7)
   are begun together when the metadata service can serve them as one
   operation; a bad one is refused alone.  Otherwise they are served one by
   one.
4. A write the state machine refused answers with its error (too large,
   over a limit, a bad request); a precondition that failed is a result, not
   an error.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from catenary.api import messages as api
from catenary.api import types as public_types
from catenary.api.errors import ErrorCode, ServiceError
from catenary.core.metadata import types as md
from catenary.core.metadata.replica import GetQuery, ListQuery
from catenary.runtime import public
from catenary.runtime.client_port import Begun, Emit
from catenary.server import system_keys as sk
from catenary.server.context import NodeContext
from catenary.server.services import Services

_REJECTION_CODES = {"too_large": ErrorCode.TOO_LARGE, "limit": ErrorCode.OVERLOADED}


def _error(code: ErrorCode, message: str) -> ServiceError:
    return ServiceError(code, message)


def _accepted(result: md.Result) -> md.Result:
    """Rule 4: the result of an applied write, or the error its refusal answers."""
    if isinstance(result, md.Rejected):
        raise _error(_REJECTION_CODES.get(result.code, ErrorCode.BAD_REQUEST), result.message)
    return result


def _get_replies(requests: list[api.Get], answer: Any) -> list[api.Reply]:
    revision = answer.revision
    return [
        api.GetReply(request.id, public.key_value(kv), revision, 0)
        for request, kv in zip(requests, answer.values, strict=True)
    ]


def _put_replies(requests: list[api.Put], outcomes: list[Any]) -> list[api.Reply]:
    replies: list[api.Reply] = []
    for request, outcome in zip(requests, outcomes, strict=True):
        if isinstance(outcome, ServiceError):
            replies.append(outcome.reply(request.id))
            continue
        try:
            replies.append(api.WriteReply(request.id, public.write_result(_accepted(outcome))))
        except ServiceError as exc:
            replies.append(exc.reply(request.id))
    return replies


def _no_replies(answer: Any) -> list[api.Reply]:
    return []


class RequestRouter:
    """What the client port serves (``client_port.RequestHandler``) for one node."""

    def __init__(self, ctx: NodeContext, services: Services) -> None:
        self._ctx = ctx
        self._metadata = services.metadata
        self._membership = services.membership
        self._logs = services.log

    def identity(self) -> tuple[str, int, int]:
        return self._ctx.config.cluster_name, self._ctx.node_id, self._ctx.generation

    # ------------------------------------------------------ validation

    def _check_key(self, key: str, *, write: bool) -> None:
        limit = self._ctx.config.metadata.key_bytes_max
        size = len(key.encode())
        if size == 0:
            raise _error(ErrorCode.BAD_REQUEST, "the key must not be empty")
        if size > limit:
            raise _error(ErrorCode.TOO_LARGE, f"key of {size} bytes exceeds the limit of {limit}")
        if write and key.startswith(sk.SYSTEM_PREFIX):
            raise _error(
                ErrorCode.REFUSED, f"keys under {sk.SYSTEM_PREFIX} are written by the nodes only"
            )

    def _check_value(self, value: bytes) -> None:
        limit = self._ctx.config.metadata.value_bytes_max
        if len(value) > limit:
            raise _error(
                ErrorCode.TOO_LARGE, f"value of {len(value)} bytes exceeds the limit of {limit}"
            )

    def _list_limit(self, limit: int) -> int:
        bound = self._ctx.config.metadata.list_limit_max
        if limit < 0:
            raise _error(ErrorCode.BAD_REQUEST, "limit must be >= 0")
        return bound if limit == 0 else min(limit, bound)

    # -------------------------------------------------------- batches

    def begin_gets(self, requests: list[api.Get]) -> Begun | None:
        """Rule 3: linearizable gets that arrived together share one read."""
        refused: list[api.Reply] = []
        keys: list[str] = []
        batched: list[api.Get] = []
        for request in requests:
            try:
                self._check_key(request.key, write=False)
            except ServiceError as exc:
                refused.append(exc.reply(request.id))
                continue
            keys.append(request.key)
            batched.append(request)
        if not batched:
            return Begun(refused, None, [], _no_replies)
        future = self._metadata.read_many_future(keys)
        if future is None:
            return None
        return Begun(refused, future, batched, functools.partial(_get_replies, batched))

    def begin_puts(self, requests: list[api.Put]) -> Begun | None:
        """Rule 3: puts that arrived together are proposed together, each with its outcome."""
        refused: list[api.Reply] = []
        commands: list[md.Command] = []
        batched: list[api.Put] = []
        for request in requests:
            try:
                self._check_key(request.key, write=True)
                self._check_value(request.value)
            except ServiceError as exc:
                refused.append(exc.reply(request.id))
                continue
            precondition = public.precondition(request.precondition)
            commands.append(md.Put(request.key, request.value, precondition, request.lease))
            batched.append(request)
        if not batched:
            return Begun(refused, None, [], _no_replies)
        future = self._metadata.write_many_future(commands)
        if future is None:
            return None
        return Begun(refused, future, batched, functools.partial(_put_replies, batched))

    # ------------------------------------------------------ one by one

    async def _write(self, command: md.Command) -> public_types.WriteResult:
        return public.write_result(_accepted(await self._metadata.write(command)))

    async def _read(self, query: GetQuery | ListQuery, *, stale: bool) -> Any:
        return await self._metadata.read(query, stale=stale)

    async def handle(self, request: api.Request) -> api.Reply:
        rid = request.id
        membership = self._membership
        match request:
            case api.Get():
                self._check_key(request.key, write=False)
                answer = await self._read(GetQuery(request.key), stale=request.stale)
                return api.GetReply(
                    rid, public.key_value(answer.kv), answer.revision, answer.behind
                )
            case api.List():
                limit = self._list_limit(request.limit)
                answer = await self._read(ListQuery(request.prefix, limit), stale=request.stale)
                return api.ListReply(
                    rid, public.key_values(answer.kvs), answer.revision, answer.more
                )
            case api.Put():
                self._check_key(request.key, write=True)
                self._check_value(request.value)
                precondition = public.precondition(request.precondition)
                put = md.Put(request.key, request.value, precondition, request.lease)
                return api.WriteReply(rid, await self._write(put))
            case api.Delete():
                self._check_key(request.key, write=True)
                delete = md.Delete(request.key, public.precondition(request.precondition))
                return api.WriteReply(rid, await self._write(delete))
            case api.GrantLease():
                return api.WriteReply(rid, await self._write(md.LeaseGrant(request.ttl_ms)))
            case api.KeepAlive():
                return api.WriteReply(rid, await self._write(md.LeaseKeepAlive(request.lease)))
            case api.RevokeLease():
                return api.WriteReply(rid, await self._write(md.LeaseRevoke(request.lease)))
            case api.GetStatus():
                return api.StatusReply(rid, self._metadata.status())
            case api.ListNodes():
                return api.NodesReply(rid, membership.node_infos())
            case api.ListServers():
                return await membership.list_servers(rid)
            case api.Provision():
                return api.OkReply(rid, await membership.provision(request))
            case api.AddServer():
                return api.OkReply(rid, await membership.add_server(request.node))
            case api.RemoveServer():
                return api.OkReply(rid, await membership.remove_server(request.node))
            case api.Join():
                return await membership.join(request)
            case (
                api.LogAppend()
                | api.LogRead()
                | api.LogFindTail()
                | api.LogTrim()
                | api.LogSeal()
                | api.LogReconfigure()
                | api.LogDescribe()
            ):
                return await self._handle_log(request)
        raise _error(ErrorCode.BAD_REQUEST, f"request {type(request).__name__} not served here")

    async def _handle_log(self, request: api.Request) -> api.Reply:
        logs = self._logs
        if logs is None:
            raise _error(ErrorCode.REFUSED, "this node has no log-server role")
        rid = request.id
        match request:
            case api.LogAppend():
                reply = await logs.append(request.log, request.payloads, request.timeout_ms)
                return api.LogAppendReply(rid, reply.first_lsn, reply.last_lsn)
            case api.LogRead():
                return await logs.read(request)
            case api.LogFindTail():
                tail = await logs.find_tail(request.log)
                return api.LogTailReply(rid, tail.tail, tail.sealed, tail.trim_point)
            case api.LogTrim():
                trimmed = await logs.trim(request.log, request.lsn)
                return api.LogTrimReply(rid, trimmed.trim_point, trimmed.segments_dropped)
            case api.LogSeal():
                sealed = await logs.seal(request.log)
                return api.LogTailReply(rid, sealed.tail, sealed.sealed, sealed.trim_point)
            case api.LogReconfigure():
                moved = await logs.reconfigure(request)
                return api.LogDescribeReply(rid, moved.logs)
            case api.LogDescribe():
                described = await logs.describe(request.log)
                return api.LogDescribeReply(rid, described.logs)
        raise _error(ErrorCode.BAD_REQUEST, f"request {type(request).__name__} not served here")

    async def watch(self, request: api.Watch, emit: Emit) -> None:
        if request.from_version < 0:
            raise _error(ErrorCode.BAD_REQUEST, "from_version must be >= 0")
        if not request.prefix:
            self._check_key(request.key, write=False)
        source = self._metadata.watch_source()
        batch_max = self._ctx.config.metadata.watch_batch_max
        version = request.from_version or source.revision_now()
        # First reply: the watch is in place, caught up to ``version``.
        emit(api.WatchReply(request.id, public.watch_answer(md.WatchBatch((), version))))
        while True:
            changed = source.changed_future()  # taken before reading: no change slips by
            answer = source.changes_since(version, request.key, request.prefix, batch_max)
            if isinstance(answer, md.Compacted):
                emit(api.WatchReply(request.id, public.watch_answer(answer)))
                return
            if answer.events:
                emit(api.WatchReply(request.id, public.watch_answer(answer)))
            if answer.revision > version:
                version = answer.revision
            if answer.events and len(answer.events) >= batch_max:
                continue
            await asyncio.shield(changed)
            if self._ctx.stopping:
                raise _error(ErrorCode.UNAVAILABLE, "the node is shutting down")
