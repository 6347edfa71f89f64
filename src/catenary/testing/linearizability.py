"""A linearizability checker for metadata histories (Wing-Gong-Lowe, partitioned by key).

Theory of operation
-------------------
A history is a list of ``Operation``s: who (``process``), when it was called and
when it returned (``return_time`` None = indeterminate: it may or may not have
taken effect), what (get / put / delete on one key, with a value and a
precondition), and the result seen.  The history is linearizable when every
operation can be given one instant between its call and return, such that
the results are those of executing them one by one in that order.

Rules of the sequential model (one key; versions are global revisions, so
the checker cannot predict them, only bound them):

1. The state is ``(value, version, floor)``: the value (None = absent), its
   version (``UNKNOWN`` when written by an indeterminate put no read has
   pinned yet) and ``floor``, a lower bound of the global revision at this
   point of the key's order.
2. ``put`` → ``Written(v)`` iff its precondition holds and ``v > floor``; then
   the state is ``(value, v, v)``.  A delete of a present key likewise; a
   delete of an absent key answers the current revision: ``v >= floor``.
3. → ``PreconditionFailed(cur)`` iff the precondition fails and ``cur`` is the
   current version (0 when absent).  An unknown version is pinned by it.
4. ``get`` → ``(value, version)`` must equal the state (pinning an unknown
   version, which must be >= floor); → absent iff the state is absent.
5. An indeterminate write either never happened or took effect at some
   instant after its call, with an unknown version above ``floor``.  (One
   whose precondition failed had no effect, the same as never happening.)
   An indeterminate get constrains nothing and is ignored.

Writes of unknown outcome are what makes the search exponential, so before
searching, each one is classified by what the history shows of it (pinned
to a version, dropped as unobservable, or optional; see ``_check_key``), and
optional ones alike in all but their call time are tried only once.

Search: per key, the WGL algorithm — walk the call/return events in time
order; at a call, try to linearize that operation now (each possible next
state in turn); at a return of an operation not yet linearized, backtrack.
States are memoized as (set of linearized operations, model state), so no
configuration is explored twice.  ``max_steps_per_key`` bounds the search:
past it the answer is "unknown", never a hang.  Ties in time count as
overlapping (a call at the instant another returns may precede it), so coarse
clocks cannot produce false violations.

Segments: within a key the search runs one quiescent segment at a time
(``_search_segments``): the history is cut where every operation called so
far has returned before the next is called and none of them is a write of
unknown outcome still optional.  Versions order the completed writes, so the
state at such a cut is the same in every linearization; each segment starts
from it.  This keeps long histories (100,000+ operations) linear in practice
and lets a violation late in one cost only its own segment's search.

Cross-key rule: revisions are global and grow, so a write that returned
before another write was called has a version no greater than it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from catenary.core.metadata.types import Precondition, PreconditionFailed, Written

UNKNOWN = -1  # version of a value written by an indeterminate put, not yet pinned

GetResult = tuple[bytes, int] | None  # (value, version), or None = absent
WriteResult = Written | PreconditionFailed
Kind = Literal["get", "put", "delete"]
_State = tuple[bytes | None, int, int]  # (value, version, floor)


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation as observed from outside."""

    process: int
    call_time: float
    return_time: float | None  # None: indeterminate (outcome unknown)
    kind: Kind
    key: str
    value: bytes = b""  # for put
    precondition: Precondition = field(default_factory=Precondition)
    result: GetResult | WriteResult = None

    @property
    def indeterminate(self) -> bool:
        return self.return_time is None or math.isinf(self.return_time)

    def describe(self) -> str:
        call = f"p{self.process} {self.kind}({self.key!r}"
        if self.kind == "put":
            call += f", {self.value!r}"
        if self.precondition.kind == "absent":
            call += ", if absent"
        elif self.precondition.kind == "version":
            call += f", if version=={self.precondition.version}"
        call += ")"
        if self.indeterminate:
            return f"{call} called {self.call_time}, outcome unknown"
        return f"{call} -> {_show_result(self.result)} [{self.call_time}, {self.return_time}]"


def _show_result(result: GetResult | WriteResult) -> str:
    if result is None:
        return "absent"
    if isinstance(result, Written):
        return f"Written({result.version})"
    if isinstance(result, PreconditionFailed):
        return f"PreconditionFailed(current={result.current_version})"
    return f"({result[0]!r}, version {result[1]})"


def _show_state(state: _State) -> str:
    value, version, floor = state
    if value is None:
        return f"absent (revision >= {floor})"
    shown = "unknown" if version == UNKNOWN else str(version)
    return f"{value!r} at version {shown} (revision >= {floor})"


@dataclass(frozen=True, slots=True)
class CheckResult:
    outcome: Literal["ok", "violation", "unknown"]
    key: str | None = None  # the first key (in key order) that is not ok
    explanation: str = ""
    operations: int = 0
    steps: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class HistoryRecorder:
    """Collects invocations and responses; unanswered writes become indeterminate."""

    def __init__(self) -> None:
        self._calls: list[tuple[int, float, Kind, str, bytes, Precondition]] = []
        self._returns: dict[int, tuple[float | None, GetResult | WriteResult]] = {}

    def call(
        self,
        process: int,
        time: float,
        kind: Kind,
        key: str,
        value: bytes = b"",
        precondition: Precondition | None = None,
    ) -> int:
        self._calls.append((process, time, kind, key, value, precondition or Precondition()))
        return len(self._calls) - 1

    def returned(self, op: int, time: float, result: GetResult | WriteResult) -> None:
        assert op not in self._returns, f"operation {op} answered twice"
        self._returns[op] = (time, result)

    def operations(self) -> list[Operation]:
        out = []
        for op, (process, time, kind, key, value, precondition) in enumerate(self._calls):
            return_time, result = self._returns.get(op, (None, None))
            if return_time is None and kind == "get":
                continue  # an unanswered read constrains nothing
            out.append(
                Operation(process, time, return_time, kind, key, value, precondition, result)
            )
        return out


# ----------------------------------------------------------- the model


def _precondition(state: _State, pre: Precondition) -> list[tuple[bool, _State]]:
    """The possible (holds, state) outcomes; an unknown version may be pinned."""
    value, version, floor = state
    if pre.kind == "none":
        return [(True, state)]
    if pre.kind == "absent":
        return [(value is None, state)]
    if pre.kind != "version":
        raise ValueError(f"unknown precondition kind {pre.kind!r}")
    if value is None:
        return [(pre.version == 0, state)]
    if version != UNKNOWN:
        return [(version == pre.version, state)]
    outcomes: list[tuple[bool, _State]] = [(False, state)]  # unknown version != wanted
    if pre.version >= floor:
        outcomes.append((True, (value, pre.version, pre.version)))
    return outcomes


def _step(state: _State, op: Operation) -> list[_State]:
    """The states after ``op`` takes effect now with its observed result (may be none)."""
    value, version, floor = state
    if op.kind == "get":
        if op.result is None:
            return [state] if value is None else []
        if not isinstance(op.result, tuple):
            raise ValueError(f"get with a write result: {op.describe()}")
        seen_value, seen_version = op.result
        if value != seen_value:
            return []
        if version == UNKNOWN:
            return [(value, seen_version, seen_version)] if seen_version >= floor else []
        return [state] if version == seen_version else []
    if op.kind not in ("put", "delete"):
        raise ValueError(f"unknown operation kind {op.kind!r}")
    out: list[_State] = []
    if op.indeterminate:
        for holds, (value, _version, floor) in _precondition(state, op.precondition):
            if not holds:
                continue  # no effect: the same as never happening
            if op.kind == "put":
                out.append((op.value, UNKNOWN, floor + 1))
            elif value is not None:
                out.append((None, 0, floor + 1))
        return out
    result = op.result
    if isinstance(result, Written):
        for holds, (value, _version, floor) in _precondition(state, op.precondition):
            if not holds:
                continue
            if op.kind == "put":
                if result.version > floor:
                    out.append((op.value, result.version, result.version))
            elif value is not None:
                if result.version > floor:
                    out.append((None, 0, result.version))
            elif result.version >= floor:
                out.append((None, 0, result.version))
        return out
    if isinstance(result, PreconditionFailed):
        current = result.current_version
        if value is None:
            candidates: list[_State] = [state] if current == 0 else []
        elif version == UNKNOWN:
            candidates = [(value, current, current)] if current >= floor else []
        else:
            candidates = [state] if version == current else []
        for candidate in candidates:
            for holds, after in _precondition(candidate, op.precondition):
                if not holds:
                    out.append(after)
        return out
    raise ValueError(f"write without a Written/PreconditionFailed result: {op.describe()}")


# ------------------------------------------------------------ the search


@dataclass(slots=True)
class _KeyResult:
    outcome: Literal["ok", "violation", "unknown"]
    steps: int
    explanation: str = ""


@dataclass(slots=True)
class _Level:
    """One depth of the search: the candidates at this configuration and where we are."""

    candidates: list[int]  # minimal operations, in call order
    blocker: int  # the earliest return not yet linearized (-1: none), for the report
    position: int = 0
    outcomes: list[_State] | None = None
    outcome: int = 0


def _search(
    ops: list[Operation],
    deadlines: list[float],
    initial: _State,
    max_steps: int,
    lazy: bool = False,
    placeholder: bytes = b"",
) -> _KeyResult:
    """WGL over one key.  ``deadlines[i]``: op i must be linearized by then (inf: optional).

    ``lazy``: try optional operations only where some required candidate
    cannot be linearized in the current state (sound when no get can return
    an optional put's value; see ``_check_key``).
    """
    count = len(ops)
    # Events: (time, 0 = call / 1 = return, op).  Calls sort before returns at
    # the same instant: touching intervals count as overlapping.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call_time, 0, i))
        events.append((deadlines[i], 1, i))
    events.sort()
    # A doubly linked list over the events; node 0 is the head sentinel, 0 ends it.
    size = len(events) + 1
    nxt = [*range(1, size), 0]
    prv = list(range(-1, size - 1))
    is_call = [False] + [kind == 0 for _, kind, _ in events]
    op_of = [-1] + [i for _, _, i in events]
    call_node = [0] * count
    return_node = [0] * count
    for node in range(1, size):
        if is_call[node]:
            call_node[op_of[node]] = node
        else:
            return_node[op_of[node]] = node
    required = [not math.isinf(deadline) for deadline in deadlines]
    kinds = [(op.kind, op.precondition.kind, op.precondition.version, op.value) for op in ops]
    dead_below = [op.precondition.version if op.precondition.kind == "version" else 0 for op in ops]

    def lift(i: int) -> None:
        for node in (call_node[i], return_node[i]):
            nxt[prv[node]] = nxt[node]
            if nxt[node]:
                prv[nxt[node]] = prv[node]

    def unlift(i: int) -> None:
        for node in (return_node[i], call_node[i]):
            nxt[prv[node]] = node
            if nxt[node]:
                prv[nxt[node]] = node

    def level() -> _Level:
        # The operations that may come next: those called before the earliest
        # deadline still pending.
        candidates: list[int] = []
        classes: set[tuple[str, str, int, bytes]] = set()
        floor = state[2]
        node = nxt[0]
        while node and is_call[node]:
            i = op_of[node]
            node = nxt[node]
            if not required[i]:
                # A version precondition below the floor can never hold again
                # (a present key's known version is the floor; versions grow).
                if 0 < dead_below[i] < floor:
                    continue
                # Optional operations alike in all but their call time are
                # interchangeable once called: try only the earliest unused one.
                if kinds[i] in classes:
                    continue
                classes.add(kinds[i])
            candidates.append(i)
        blocker = op_of[node] if node else -1
        now = [i for i in candidates if required[i]]
        if not lazy:
            return _Level(candidates, blocker)
        stuck = [i for i in now if not _step(state, ops[i])]
        if not stuck:
            return _Level(now, blocker)  # no optional op can help here
        # Try first the optional ops after which a stuck required op fits (one
        # such op is as good as any longer run of them); only if there is none
        # may a run of several be needed.
        later = [i for i in candidates if not required[i]]
        helpers = [
            i
            for i in later
            if any(_step(after, ops[c]) for after in _step(state, ops[i]) for c in stuck)
        ]
        if helpers:
            return _Level(helpers + now, blocker)
        # Any run of optional ops ends in one of two states, at best with the
        # floor one higher (a higher floor only forbids more): present with the
        # placeholder and an unknown version, or absent.  If no stuck op fits
        # either, no run can help.
        ends: list[_State] = []
        if any(ops[i].kind == "put" for i in later):
            ends.append((placeholder, UNKNOWN, state[2] + 1))
        if any(ops[i].kind == "delete" for i in later):
            ends.append((None, 0, state[2] + 1))
        if any(_step(end, ops[c]) for end in ends for c in stuck):
            return _Level(later + now, blocker)
        return _Level(now, blocker)

    # Memo with subsumption: a configuration is (required ops linearized,
    # optional ops used, state).  Having used fewer optional ops with the
    # rest equal leaves every choice open, so a configuration whose used set
    # contains one already seen is skipped.
    seen: dict[tuple[int, _State], list[int]] = {}

    def fresh(done: int, used: int, state: _State) -> bool:
        sets = seen.get((done, state))
        if sets is None:
            seen[(done, state)] = [used]
            return True
        for earlier in sets:
            if earlier & ~used == 0:
                return False
        sets[:] = [earlier for earlier in sets if used & ~earlier]
        sets.append(used)
        return True

    required_total = sum(required)
    required_done = 0
    done_bits = 0  # required operations linearized
    used_bits = 0  # optional operations linearized
    state = initial
    path: list[tuple[int, _State]] = []  # (op, state before it)
    levels = [level()]
    best = (-1, -1, initial)  # (ops linearized, op stuck on, state then) for the report
    steps = 0
    while required_done < required_total:
        steps += 1
        if steps > max_steps:
            return _KeyResult("unknown", steps, f"gave up after max_steps_per_key={max_steps}")
        top = levels[-1]
        if top.position < len(top.candidates):
            i = top.candidates[top.position]
            if top.outcomes is None:
                top.outcomes = _step(state, ops[i])
                top.outcome = 0
            if top.outcome >= len(top.outcomes):
                top.position += 1
                top.outcomes = None
                continue
            after = top.outcomes[top.outcome]
            top.outcome += 1
            bit = 1 << i
            new_done = done_bits | bit if required[i] else done_bits
            new_used = used_bits if required[i] else used_bits | bit
            if not fresh(new_done, new_used, after):
                continue
            path.append((i, state))
            state, done_bits, used_bits = after, new_done, new_used
            required_done += required[i]
            lift(i)
            levels.append(level())
            continue
        # Every candidate failed here: undo the last choice.
        if required_done > best[0]:
            best = (required_done, top.blocker, state)
        levels.pop()
        if not path:
            done, stuck, at = best
            stuck_text = ops[stuck].describe() if stuck >= 0 else "nothing"
            return _KeyResult(
                "violation",
                steps,
                f"no linearization: at most {done} of {required_total} operations fit; "
                f"then {stuck_text} cannot be placed (state then: {_show_state(at)})",
            )
        i, state = path.pop()
        unlift(i)
        done_bits &= ~(1 << i)
        used_bits &= ~(1 << i)
        required_done -= required[i]
    return _KeyResult("ok", steps)


def _end_state(ops: list[Operation], state: _State) -> _State:
    """The one state every linearization of ``ops`` (all completed) ends in.

    Versions order the writes: the write with the highest version came last
    (at a tie, a put after a delete of the absent key, which answers the
    current revision); gets and failed preconditions change nothing.
    """
    last: Operation | None = None
    for op in ops:
        if op.kind == "get" or not isinstance(op.result, Written):
            continue
        if last is None or (op.result.version, op.kind == "put") > (
            last.result.version,  # type: ignore[union-attr]
            last.kind == "put",
        ):
            last = op
    if last is None:
        return state
    assert isinstance(last.result, Written)
    version = last.result.version
    return (last.value, version, version) if last.kind == "put" else (None, 0, version)


def _search_segments(
    ops: list[Operation],
    deadlines: list[float],
    initial: _State,
    max_steps: int,
    lazy: bool = False,
    placeholder: bytes = b"",
) -> _KeyResult:
    """``_search``, one quiescent segment at a time.

    A segment ends where every operation called so far has returned before
    the next one is called, and none of them is optional (of unknown
    outcome) unless it can no longer take effect: an optional write whose
    version precondition a higher version has passed.  The state there is then the same for every linearization
    (``_end_state``), so the next segment starts from it and the segments are
    checked one by one: exact, and a violation late in a long history costs
    the search of its own segment only, not of everything before it.
    """
    # Until when each operation may still take effect.  An optional write with
    # a version precondition v can take effect only while the key is at
    # version v: never after a write with a higher version returned.
    written = sorted(
        (deadlines[i], op.result.version)
        for i, op in enumerate(ops)
        if not math.isinf(deadlines[i]) and op.kind != "get" and isinstance(op.result, Written)
    )
    horizons = list(deadlines)
    for i, op in enumerate(ops):
        # Version 0 means "absent", which a delete can make true again at any time:
        # only a precondition on a real version is passed for good.
        if (
            math.isinf(deadlines[i])
            and op.precondition.kind == "version"
            and op.precondition.version > 0
        ):
            wanted = op.precondition.version
            horizons[i] = next((t for t, v in written if v > wanted), math.inf)
    order = sorted(range(len(ops)), key=lambda i: ops[i].call_time)
    segments: list[list[int]] = []
    current: list[int] = []
    horizon = -math.inf
    for i in order:
        if current and ops[i].call_time > horizon:
            segments.append(current)
            current = []
        current.append(i)
        horizon = max(horizon, horizons[i])
    if current:
        segments.append(current)
    state = initial
    steps = 0
    for number, segment in enumerate(segments):
        part = [ops[i] for i in segment]
        result = _search(part, [deadlines[i] for i in segment], state, max_steps, lazy, placeholder)
        steps += result.steps
        if result.outcome != "ok":
            result.steps = steps
            if len(segments) > 1:
                result.explanation = (
                    f"in quiescent segment {number + 1} of {len(segments)} "
                    f"(from {part[0].call_time}): {result.explanation}"
                )
            return result
        if number + 1 < len(segments):
            # Optional writes in a closed segment came before a higher version: not last.
            state = _end_state([ops[i] for i in segment if not math.isinf(deadlines[i])], state)
    return _KeyResult("ok", steps)


def _check_key(
    ops: list[Operation],
    initial: _State,
    max_steps: int,
    revision_before: Callable[[float], int] = lambda _time: 0,
) -> _KeyResult:
    """Sort the writes of unknown outcome by what the history shows of them, then search.

    ``revision_before(t)``: the highest version a completed write (of any key)
    returned before time t; a write called at t that takes effect gets a
    higher version (revisions are global and only grow).

    - An indeterminate put whose value no other put on the key writes, and
      that a completed get returned as (value, v), certainly took effect, with
      version v, before that get returned: it is checked as a completed
      ``Written(v)`` with that deadline.
    - A version seen on the key (in a get, a ``PreconditionFailed`` or a
      version precondition) that no completed put returned must come from an
      indeterminate put that could carry it: called before the observation
      returned, with ``revision_before(call) < v``.  When only one put
      qualifies, it took effect with that version: checked as completed too.
    - An indeterminate put that nothing could have observed (its value never
      read, no unexplained version it could carry) is dropped: nothing after it
      depends on it, and leaving it out only loosens the bounds on later
      versions, so it never helps a linearization.
    - A version seen with a value (in a get) can only come from a put of
      that value.
    - The others (and every indeterminate delete) are optional.  When no get
      can have read an optional put (the usual case: unique values), the
      optional puts get one shared placeholder value and the search inserts
      optional ops only where a required op is stuck and they can unstick it
      (see ``_search``).  Otherwise the search first runs without them ("never
      happened" is one legal choice) and only if that fails with all of them.
    """
    writers: dict[bytes, int] = defaultdict(int)
    written_versions: set[int] = set()
    for op in ops:
        if op.kind == "put":
            writers[op.value] += 1
            if isinstance(op.result, Written) and not op.indeterminate:
                written_versions.add(op.result.version)
    if initial[0] is not None:
        writers[initial[0]] += 1
        written_versions.add(initial[1])
    # Puts of unknown outcome whose value a get returned: they took effect.
    first_read: dict[bytes, tuple[float, Operation, int]] = {}
    for op in ops:
        if op.kind == "get" and isinstance(op.result, tuple):
            seen_at = float(op.return_time or 0.0)
            value, version = op.result
            if value not in first_read or seen_at < first_read[value][0]:
                first_read[value] = (seen_at, op, version)
    pinned: dict[int, tuple[float, int]] = {}  # op index -> (deadline, version)
    for i, op in enumerate(ops):
        if not (op.indeterminate and op.kind == "put"):
            continue
        read = first_read.get(op.value)
        if read is None or writers[op.value] != 1:
            continue
        seen_at, reader, version = read
        if seen_at < op.call_time:
            return _KeyResult(
                "violation",
                0,
                f"{reader.describe()} returned a value whose only writer, "
                f"{op.describe()}, was called later",
            )
        pinned[i] = (seen_at, version)
        written_versions.add(version)
    # Versions observed that no known write explains: (version, earliest deadline),
    # and the values gets returned at them (the write that made it wrote that).
    unexplained: dict[int, float] = {}
    values_at: dict[int, set[bytes]] = defaultdict(set)
    for op in ops:
        seen: list[int] = []
        if op.kind == "get" and isinstance(op.result, tuple):
            seen.append(op.result[1])
            values_at[op.result[1]].add(op.result[0])
        elif isinstance(op.result, PreconditionFailed):
            seen.append(op.result.current_version)
        deadline = math.inf if op.indeterminate else float(op.return_time or 0.0)
        if op.precondition.kind == "version":
            if isinstance(op.result, Written) and not op.indeterminate:
                seen.append(op.precondition.version)  # it held: the version existed
            elif op.precondition.version not in written_versions:
                # Not an observation, but an optional write may depend on it.
                unexplained.setdefault(op.precondition.version, math.inf)
        for version in seen:
            if version > 0 and version not in written_versions:
                unexplained[version] = min(unexplained.get(version, math.inf), deadline)
    unpinned = [i for i, op in enumerate(ops) if op.indeterminate and op.kind == "put"]
    unpinned = [i for i in unpinned if i not in pinned]
    relevant: set[int] = set()
    for version, deadline in sorted(unexplained.items()):
        values = values_at.get(version)
        could = [
            i
            for i in unpinned
            if ops[i].call_time <= deadline
            and revision_before(ops[i].call_time) < version
            and (values is None or ops[i].value in values)
        ]
        relevant.update(could)
        if len(could) == 1 and not math.isinf(deadline) and could[0] not in pinned:
            pinned[could[0]] = (deadline, version)
    kept: list[Operation] = []
    deadlines: list[float] = []
    optional = 0
    for i, op in enumerate(ops):
        if not op.indeterminate:
            kept.append(op)
            deadlines.append(float(op.return_time or 0.0))
        elif i in pinned:
            deadline, version = pinned[i]
            kept.append(
                Operation(
                    op.process,
                    op.call_time,
                    deadline,
                    op.kind,
                    op.key,
                    op.value,
                    op.precondition,
                    Written(version),
                )
            )
            deadlines.append(deadline)
        elif op.kind == "put" and op.value not in first_read and i not in relevant:
            continue  # nothing could have observed it
        else:
            kept.append(op)
            deadlines.append(math.inf)
            optional += 1
    if not optional:
        return _search_segments(kept, deadlines, initial, max_steps)
    # An optional put whose value no get returned can be given one shared
    # placeholder value: only gets look at values.  Then the optional puts
    # are interchangeable, and when every optional put is such, an optional
    # run before a required op that fits anyway never helps (the state after
    # that op is the same or looser without the run), which makes the lazy
    # search complete.
    read_values = {op.result[0] for op in ops if op.kind == "get" and isinstance(op.result, tuple)}
    placeholder = b"\x00unread"
    while placeholder in read_values:
        placeholder += b"\x00"
    lazy = True
    for i, op in enumerate(kept):
        if not math.isinf(deadlines[i]) or op.kind != "put":
            continue
        if op.value in read_values:
            lazy = False
        else:
            kept[i] = Operation(
                op.process,
                op.call_time,
                op.return_time,
                op.kind,
                op.key,
                placeholder,
                op.precondition,
                op.result,
            )
    if lazy:
        # The lazy search already tries the optional ops only where needed.
        return _search_segments(kept, deadlines, initial, max_steps, lazy, placeholder)
    required = [i for i, deadline in enumerate(deadlines) if not math.isinf(deadline)]
    first = _search_segments(
        [kept[i] for i in required], [deadlines[i] for i in required], initial, max_steps
    )
    if first.outcome != "violation":
        return first
    second = _search_segments(kept, deadlines, initial, max_steps)
    second.steps += first.steps
    if second.outcome == "unknown":
        second.explanation = (
            f"without the {optional} writes of unknown outcome: "
            f"{first.explanation}; with them the search {second.explanation}"
        )
    return second


def _check_revision_order(ops: list[Operation]) -> CheckResult | None:
    """A write that returned before another was called has a version no greater."""
    writes = [
        op
        for op in ops
        if op.kind != "get" and not op.indeterminate and isinstance(op.result, Written)
    ]
    by_return = sorted(writes, key=lambda op: (op.return_time or 0.0, op.call_time))
    highest: Operation | None = None
    position = 0
    for op in sorted(writes, key=lambda op: (op.call_time, op.return_time or 0.0)):
        while position < len(by_return) and (by_return[position].return_time or 0.0) < op.call_time:
            earlier = by_return[position]
            assert isinstance(earlier.result, Written)
            if highest is None or (
                isinstance(highest.result, Written)
                and earlier.result.version > highest.result.version
            ):
                highest = earlier
            position += 1
        assert isinstance(op.result, Written)
        if (
            highest is not None
            and isinstance(highest.result, Written)
            and op.result.version < highest.result.version
        ):
            return CheckResult(
                "violation",
                op.key,
                f"revision went back: {highest.describe()} returned before "
                f"{op.describe()} was called",
                len(ops),
            )
    return None


def check(
    history: Iterable[Operation],
    *,
    max_steps_per_key: int = 1_000_000,
    initial: Mapping[str, tuple[bytes, int]] | None = None,
) -> CheckResult:
    """Is the history linearizable?  Keys are checked in key order.

    ``initial`` gives keys present before the history (value, version); every
    other key starts absent at revision 0.
    """
    ops = list(history)
    for op in ops:
        if op.return_time is not None and op.return_time < op.call_time:
            raise ValueError(f"returns before it is called: {op.describe()}")
        if op.kind not in ("get", "put", "delete"):
            raise ValueError(f"unknown operation kind {op.kind!r}")
        if op.indeterminate:
            continue
        if op.kind == "get" and not (op.result is None or isinstance(op.result, tuple)):
            raise ValueError(f"a get needs (value, version) or None: {op.describe()}")
        if op.kind != "get" and not isinstance(op.result, Written | PreconditionFailed):
            raise ValueError(f"a completed write needs its result: {op.describe()}")
    initial = initial or {}
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.kind == "get" and op.indeterminate:
            continue
        by_key[op.key].append(op)
    floor0 = max((version for _, version in initial.values()), default=0)
    # The global revision as completed writes reveal it: (return time, highest version so far).
    returned = sorted(
        (float(op.return_time or 0.0), op.result.version)
        for op in ops
        if op.kind != "get" and not op.indeterminate and isinstance(op.result, Written)
    )
    times = [time for time, _ in returned]
    highest: list[int] = []
    for _, version in returned:
        highest.append(max(version, highest[-1] if highest else floor0))

    def revision_before(time: float) -> int:
        position = bisect_left(times, time)
        return highest[position - 1] if position else floor0

    steps = 0
    unknown: CheckResult | None = None
    for key in sorted(by_key):
        start = initial.get(key)
        state: _State = (start[0], start[1], floor0) if start else (None, 0, floor0)
        result = _check_key(by_key[key], state, max_steps_per_key, revision_before)
        steps += result.steps
        if result.outcome == "violation":
            return CheckResult("violation", key, result.explanation, len(ops), steps)
        if result.outcome == "unknown" and unknown is None:
            unknown = CheckResult("unknown", key, result.explanation, len(ops), steps)
    cross = _check_revision_order(ops)
    if cross is not None:
        return CheckResult(cross.outcome, cross.key, cross.explanation, len(ops), steps)
    if unknown is not None:
        return CheckResult("unknown", unknown.key, unknown.explanation, len(ops), steps)
    return CheckResult("ok", None, "", len(ops), steps)
