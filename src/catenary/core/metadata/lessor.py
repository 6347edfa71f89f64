"""The leader-side lease clock: decides when leases expire and records their progress.

Theory of operation
-------------------
The state machine has no clock, so lease time lives here, on the leader only,
with time passed in as ``now_ms`` (the host's monotonic clock).  Rules:

1. ``become_leader(state, now_ms)`` when this member becomes leader (or
   installs a snapshot while leader): each lease's deadline is
   ``now + remaining_ms`` from the last applied checkpoint — NOT a fresh TTL,
   so repeated elections cannot keep a dead client's lease alive.  Entries of
   earlier terms applied later still reach ``observe``.  ``step_down()`` on
   losing leadership forgets everything.
2. ``observe(index, state.last_command, result, now_ms)`` after every
   applied NORMAL entry (the lessor reads the command itself: a keep-alive
   answers ``LeaseGranted``).
   While leader: a grant or successful keep-alive sets deadline = now + TTL; a
   revoke removes the lease; an expiry removes the leases the state machine
   removed (those not refreshed after the expiry's ``applied_index``); a
   checkpoint applied after ``become_leader`` (a new leader whose applied state
   lagged, e.g. restarted just before it won) moves a lease it covers to
   ``min(deadline, now + remaining)`` — the leader that measured it promised no
   more, so a lagging new leader does not run a lease from an older checkpoint
   for longer than the newer one allows, and never shortens it below what any
   leader promised.
3. ``expired(now_ms)`` returns a ``LeaseExpire`` for leases whose deadline has
   passed (at most ``expire_batch_max``, smallest ids first) carrying the
   highest applied index observed, so the state machine spares a lease
   refreshed by a later entry.  A lease proposed for expiry is not proposed
   again for ``expire_retry_ms`` (the proposal may still be in flight) — unless
   the proposal was refused outright (``expiry_refused``: a leadership transfer
   in flight, no entry of the term committed yet), then at the next tick.
4. ``checkpoint(now_ms)`` (call it every tick: it keeps its own interval)
   returns, once every ``checkpoint_interval_ms``, the
   remaining time of the live leases (at most ``checkpoint_batch_max`` per
   command; with more leases consecutive calls return the next batches at
   once until all were covered).  A new leader then resumes from these values,
   so a lease outlives its TTL by at most about one interval across a leader
   change — never less than its TTL.  The checkpoint carries the highest
   applied index observed, so a keep-alive applied after the measurement (it
   was in flight) is not overwritten by the older remaining time.
5. Everything is iterated in lease-id order: same inputs, same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from catenary.core.metadata.state import MetadataStateMachine
from catenary.core.metadata.types import (
    Command,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseKeepAlive,
    LeaseRevoke,
    Result,
)


class LessorConfig(msgspec.Struct, frozen=True, kw_only=True):
    checkpoint_interval_ms: int = 1000
    checkpoint_batch_max: int = 1000  # leases per LeaseCheckpoint command
    expire_batch_max: int = 1000  # leases per LeaseExpire command
    expire_retry_ms: int = 2000  # re-propose an expiry not applied after this long

    def __post_init__(self) -> None:
        if self.checkpoint_interval_ms < 1 or self.expire_retry_ms < 1:
            raise ValueError("checkpoint_interval_ms and expire_retry_ms must be >= 1")
        if self.checkpoint_batch_max < 1 or self.expire_batch_max < 1:
            raise ValueError("checkpoint_batch_max and expire_batch_max must be >= 1")


@dataclass(slots=True)
class _Held:
    ttl_ms: int
    deadline_ms: int
    refreshed_index: int
    expiry_proposed_ms: int | None = None


class Lessor:
    """Lease deadlines on the leader; pure, time as arguments."""

    def __init__(self, config: LessorConfig | None = None) -> None:
        self.config = config or LessorConfig()
        self._leader = False
        self._held: dict[int, _Held] = {}
        self._observed_index = 0
        self._next_checkpoint_ms = 0
        self._checkpoint_cursor = 0  # next lease id to include in a checkpoint round

    @property
    def is_leader(self) -> bool:
        return self._leader

    def deadline_ms(self, lease: int) -> int | None:
        held = self._held.get(lease)
        return held.deadline_ms if held is not None else None

    def become_leader(self, state: MetadataStateMachine, now_ms: int) -> None:
        """Become the lease clock, resuming each lease from its last checkpoint."""
        self._leader = True
        self._held = {
            info.lease: _Held(info.ttl_ms, now_ms + info.remaining_ms, info.refreshed_index)
            for info in state.leases()
        }
        self._observed_index = state.applied_index
        self._next_checkpoint_ms = now_ms + self.config.checkpoint_interval_ms
        self._checkpoint_cursor = 0

    def step_down(self) -> None:
        self._leader = False
        self._held = {}

    def observe(self, index: int, command: Command | None, result: Result, now_ms: int) -> None:
        """Called after each applied entry (``command`` None for NOOP/undecodable)."""
        self._observed_index = max(self._observed_index, index)
        if not self._leader or command is None:
            return
        match command:
            case LeaseGrant() | LeaseKeepAlive():
                if isinstance(result, LeaseGranted):
                    self._held[result.lease] = _Held(result.ttl_ms, now_ms + result.ttl_ms, index)
            case LeaseRevoke():
                self._held.pop(command.lease, None)
            case LeaseExpire():
                for lease in command.leases:
                    held = self._held.get(lease)
                    if held is not None and held.refreshed_index <= command.applied_index:
                        del self._held[lease]
            case LeaseCheckpoint():
                for lease, remaining_ms in command.remaining_ms:
                    held = self._held.get(lease)
                    if held is not None and (
                        command.applied_index == 0 or held.refreshed_index <= command.applied_index
                    ):
                        held.deadline_ms = min(held.deadline_ms, now_ms + remaining_ms)
            case _:
                pass

    def expired(self, now_ms: int) -> LeaseExpire | None:
        if not self._leader:
            return None
        due: list[int] = []
        for lease, held in sorted(self._held.items()):
            if held.deadline_ms > now_ms:
                continue
            proposed = held.expiry_proposed_ms
            if proposed is not None and now_ms < proposed + self.config.expire_retry_ms:
                continue
            due.append(lease)
            held.expiry_proposed_ms = now_ms
            if len(due) >= self.config.expire_batch_max:
                break
        if not due:
            return None
        return LeaseExpire(tuple(due), self._observed_index)

    def expiry_refused(self, leases: tuple[int, ...]) -> None:
        """The expiry of ``leases`` was refused before it was proposed: decide again
        at the next tick instead of after ``expire_retry_ms``."""
        for lease in leases:
            held = self._held.get(lease)
            if held is not None:
                held.expiry_proposed_ms = None

    def checkpoint(self, now_ms: int) -> LeaseCheckpoint | None:
        if not self._leader or now_ms < self._next_checkpoint_ms:
            return None
        batch: list[tuple[int, int]] = []
        finished = True
        for lease, held in sorted(self._held.items()):
            if lease < self._checkpoint_cursor:
                continue
            if len(batch) >= self.config.checkpoint_batch_max:
                finished = False
                break
            batch.append((lease, max(0, held.deadline_ms - now_ms)))
        if finished:
            self._checkpoint_cursor = 0
            self._next_checkpoint_ms = now_ms + self.config.checkpoint_interval_ms
        else:
            self._checkpoint_cursor = batch[-1][0] + 1
        if not batch:
            return None
        return LeaseCheckpoint(tuple(batch), self._observed_index)
