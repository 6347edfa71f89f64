"""Reconfiguration and trim of a virtual log: the orchestration of B1/T4 and B2/C4 (sans-IO).

Theory of operation
-------------------
``Reconfigure`` moves a log to a new tail segment: seal the tail segment,
find its tail ``T`` (a ``TailFinder`` for replicated and local segments, the
``MemoryLoglet`` itself for memory ones), then propose the chain extended by a
new segment at ``base + T - 1`` as a compare-and-set on ``chain_key(log_id)``
with the version it read.  ``TrimLog`` computes the effective trim point and
the dropped segments, writes the chain the same way, and then tells the
loglets.  Both are driven by the host: it executes the effects they hand out
(``take_effects``) and feeds back the results.

Effects and their results:

- ``SendLoglet(node, message)``: send a loglet message to a log-server; its
  answers come back through ``on_message(src, message)``.
- ``ReadChain(key)``: read the chain; answer ``on_chain_read(chain, version)``.
- ``CasChain(key, expected_version, value, chain)``: put ``value`` (the encoded
  ``chain``) if the key's version is ``expected_version``; answer
  ``on_cas(True, new_version)`` or ``on_cas(False)`` (a failed precondition, or
  an indeterminate outcome: the re-read settles which it was).
- ``tick()`` drives the finder's resends.

Memory segments are sealed and trimmed in place through the host's lookup.

Rules (docs/design/log.md, B1, B2, B4-B7; the tests check each):

RC1 The new segment is proposed only after the tail segment is sealed and its
    tail found (and repaired, T3); its base is ``base + T - 1`` (C2).
RC2 The finder's release of ``T`` to the log-servers (``Tail``) is withheld
    until the chain records a tail; then the *recorded* tail is released.  A
    finder that lost the race must not let servers (and readers) serve up to
    a candidate the chain did not admit (T4).
RC3 A failed compare-and-set re-reads the chain: if the tail moved past the
    sealed segment, that segment is adopted (``adopted``: this reconfiguration
    did not see its own write succeed; after an indeterminate write the
    adopted segment may be its own); if not, the same tail is proposed again
    on the current chain and version.  The tail is never recomputed: the segment is
    sealed, its tail final.
RC4 A replicated segment's nodeset comes from ``select_nodeset`` (previous
    nodeset first, salted by the log id), chosen before the seal: no valid
    nodeset fails the reconfiguration with ``NodesetUnavailable`` before the
    tail segment is sealed, so the log stays writable.
TR1 A trim writes the chain only when it changes it, retries a failed
    compare-and-set on the re-read chain, and answers the effective trim point
    and the segments it dropped (B2: never silently nothing).
TR2 After the chain is written, ``Trim`` goes to the servers of the segment
    holding the trim point (its offset) and of every dropped segment (up to
    its end), so their space is reclaimed; memory segments trim in place.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

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
    encode_chain,
    extend,
)
from catenary.core.bifrost.chain import trim as chain_trim
from catenary.core.bifrost.memory import local_placement
from catenary.core.bifrost.read_stream import MemoryLookup
from catenary.core.loglet.nodeset import LogServerInfo, NodesetUnavailable, select_nodeset
from catenary.core.loglet.repair import FinderConfig, TailFinder
from catenary.core.loglet.replication import NodeId, ReplicationProperty
from catenary.core.loglet.types import Lsn, Offset, SequencerId, Tail, Trim, to_offset

# ------------------------------------------------------------------ effects


class SendLoglet(msgspec.Struct, frozen=True):
    node: NodeId
    message: msgspec.Struct


class ReadChain(msgspec.Struct, frozen=True):
    key: str


class CasChain(msgspec.Struct, frozen=True):
    key: str
    expected_version: int
    value: bytes
    chain: Chain


Effect = SendLoglet | ReadChain | CasChain


class NewSegment(msgspec.Struct, frozen=True):
    """What to put after the sealed tail segment."""

    provider: str
    sequencer: SequencerId | None = None  # replicated: the new segment's writer
    replication: ReplicationProperty | None = None  # replicated
    nodeset_size: int = 0  # replicated: target size (select_nodeset)
    node: int | None = None  # local: the node that holds it


def placement(segment: Segment) -> ReplicatedParams | None:
    """The sequencer, nodeset and replication a segment runs with (None: memory)."""
    if segment.provider == REPLICATED:
        return segment.replicated
    if segment.provider == LOCAL and segment.local is not None:
        return local_placement(segment.local)
    return None


SEALING = "sealing"
PROPOSING = "proposing"
READING = "reading"
DONE = "done"
FAILED = "failed"


class Reconfigure:
    """Seal the tail segment, find its tail, extend the chain (RC1-RC4)."""

    def __init__(
        self,
        chain: Chain,
        version: int,
        new: NewSegment,
        *,
        repairer: SequencerId,
        servers: Mapping[NodeId, LogServerInfo] | None = None,
        locations: Mapping[NodeId, str] | None = None,
        memory: MemoryLookup | None = None,
        finder_config: FinderConfig | None = None,
    ) -> None:
        self.log_id = chain.log_id
        self.key = chain_key(chain.log_id)
        self.sealed_index = chain.tail.index
        self.new = new
        self.phase = SEALING
        self.tail: Offset | None = None  # the sealed segment's tail as found
        self.lost: list[tuple[Offset, Offset]] = []  # data loss the finder met
        self.segment: Segment | None = None  # the log's new tail segment, once done
        self.adopted = False
        self.error: Exception | None = None
        self.chain: Chain = chain
        self._version = version
        self._servers = dict(servers or {})
        self._memory = memory
        self._proposed: Segment | None = None
        self._effects: list[Effect] = []
        self._sealed = chain.tail
        self._finder: TailFinder | None = None
        try:
            # RC4: chosen before the seal, so no nodeset leaves the log writable.
            self._params = self._new_params()
        except (ChainError, NodesetUnavailable) as exc:
            self._fail(exc)
            return
        params = placement(self._sealed)
        if params is not None:
            self._finder = TailFinder(
                self._sealed.loglet(self.log_id),
                params.nodeset,
                params.replication,
                repairer,
                locations=locations,
                config=finder_config,
            )
            self._drain_finder()
        else:
            memory_loglet = memory(self._sealed.loglet(self.log_id)) if memory else None
            if memory_loglet is None:
                self._fail(ChainError(f"log {self.log_id}: no memory loglet to seal"))
            else:
                self._found(memory_loglet.seal())

    @property
    def done(self) -> bool:
        return self.phase in (DONE, FAILED)

    def take_effects(self) -> list[Effect]:
        out, self._effects = self._effects, []
        return out

    # ------------------------------------------------------------- inputs

    def on_message(self, src: NodeId, m: msgspec.Struct) -> None:
        if self._finder is not None and self.phase == SEALING:
            self._finder.on_message(src, m)
            self._drain_finder()

    def tick(self) -> None:
        if self._finder is not None and self.phase == SEALING:
            self._finder.tick()
            self._drain_finder()

    def on_cas(self, ok: bool, version: int | None = None) -> None:
        if self.phase != PROPOSING:
            return
        if ok:
            assert self._proposed is not None
            self._finish(self._proposed, adopted=False)
            if version is not None:
                self._version = version
            return
        self.phase = READING
        self._effects.append(ReadChain(self.key))

    def on_chain_read(self, chain: Chain | None, version: int) -> None:
        if self.phase != READING:
            return
        if chain is None:
            self._fail(ChainError(f"log {self.log_id}: the chain is gone"))
            return
        self.chain, self._version = chain, version
        winner = adopt(chain, self.sealed_index)
        if winner is not None:
            self._finish(winner, adopted=True)
        elif chain.tail.index == self.sealed_index:
            self._propose()
        else:
            self._fail(ChainError(f"log {self.log_id}: segment {self.sealed_index} is gone"))

    # ---------------------------------------------------------- internals

    def _drain_finder(self) -> None:
        finder = self._finder
        assert finder is not None
        for node, message in finder.take_messages():
            if isinstance(message, Tail):
                continue  # RC2: released once the chain records a tail
            self._effects.append(SendLoglet(node, message))
        if finder.done and finder.tail is not None:
            self.lost = list(finder.lost)
            self._found(finder.tail)

    def _found(self, tail: Offset) -> None:
        self.tail = tail
        self._propose()

    def _new_params(self) -> tuple[ReplicatedParams | None, LocalParams | None]:
        new = self.new
        if new.provider == REPLICATED:
            if new.sequencer is None or new.replication is None:
                raise ChainError("a replicated segment needs a sequencer and a replication")
            previous = placement(self._sealed)
            nodeset = select_nodeset(
                self._servers,
                new.replication,
                target_size=new.nodeset_size,
                previous=previous.nodeset if previous else (),
                salt=self.log_id,
            )
            return ReplicatedParams(new.sequencer, nodeset, new.replication), None
        if new.provider == LOCAL:
            if new.node is None:
                raise ChainError("a local segment needs its node")
            return None, LocalParams(new.node)
        if new.provider == MEMORY:
            return None, None
        raise ChainError(f"unknown provider {new.provider!r}")

    def _propose(self) -> None:
        assert self.tail is not None
        try:
            replicated, local = self._params
            proposed = extend(
                self.chain,
                self.sealed_index,
                self.tail,
                self.new.provider,
                replicated=replicated,
                local=local,
            )
        except ChainError as exc:
            self._fail(exc)
            return
        self._proposed = proposed.tail
        self.phase = PROPOSING
        self._effects.append(CasChain(self.key, self._version, encode_chain(proposed), proposed))
        self.chain = proposed

    def _finish(self, segment: Segment, *, adopted: bool) -> None:
        self.phase = DONE
        self.segment = segment
        self.adopted = adopted
        params = placement(self._sealed)
        # RC2: the recorded tail (the winner's, if adopted), never a lost candidate.  It
        # is the base of the segment right after the sealed one — not of the chain's
        # tail, which an adopted chain may have moved several segments further.
        after = self.chain.segment(self._sealed.index + 1)
        if params is not None and after is not None:
            recorded = to_offset(self._sealed.base_lsn, after.base_lsn)
            loglet = self._sealed.loglet(self.log_id)
            for node in params.nodeset:
                self._effects.append(SendLoglet(node, Tail(loglet, recorded)))

    def _fail(self, error: Exception) -> None:
        self.phase = FAILED
        self.error = error


class TrimLog:
    """Trim a log through an LSN: chain first, then the loglets (TR1, TR2)."""

    def __init__(
        self,
        chain: Chain,
        version: int,
        lsn: Lsn,
        committed_tail: Lsn,
        *,
        memory: MemoryLookup | None = None,
    ) -> None:
        self.log_id = chain.log_id
        self.key = chain_key(chain.log_id)
        self.lsn = lsn
        self.committed_tail = committed_tail
        self.phase = PROPOSING
        self.trim_point: Lsn = chain.trim_point  # effective, once done
        self.dropped: tuple[Segment, ...] = ()
        self._memory = memory
        self._effects: list[Effect] = []
        self._proposed: Chain | None = None
        self._attempt(chain, version)

    @property
    def done(self) -> bool:
        return self.phase in (DONE, FAILED)

    def take_effects(self) -> list[Effect]:
        out, self._effects = self._effects, []
        return out

    def on_cas(self, ok: bool, version: int | None = None) -> None:
        if self.phase != PROPOSING:
            return
        if ok:
            assert self._proposed is not None
            self._finish(self._proposed)
            return
        self.phase = READING
        self._effects.append(ReadChain(self.key))

    def on_chain_read(self, chain: Chain | None, version: int) -> None:
        if self.phase != READING:
            return
        if chain is None:
            self.phase = FAILED
            return
        self._attempt(chain, version)

    def _attempt(self, chain: Chain, version: int) -> None:
        new, point, dropped = chain_trim(chain, self.lsn, self.committed_tail)
        self.trim_point, self.dropped = point, dropped
        self._proposed = new
        if new == chain:
            self._finish(chain)  # nothing to write: the answer still says where it is
            return
        self.phase = PROPOSING
        self._effects.append(CasChain(self.key, version, encode_chain(new), new))

    def _finish(self, chain: Chain) -> None:
        self.phase = DONE
        point = self.trim_point
        targets: list[tuple[Segment, Offset]] = []
        holder = chain.find(point) if point >= 1 else None
        if holder is not None:
            targets.append((holder, to_offset(holder.base_lsn, point)))
        for segment in self.dropped:
            # The dropped segment ends where the next one begins.
            following = [s for s in (*self.dropped, *chain.segments) if s.index > segment.index]
            end = min(s.base_lsn for s in following) if following else None
            if end is not None:
                targets.append((segment, to_offset(segment.base_lsn, end) - 1))
        for segment, offset in targets:
            if offset < 1:
                continue
            loglet = segment.loglet(self.log_id)
            params = placement(segment)
            if params is not None:
                for node in params.nodeset:
                    self._effects.append(SendLoglet(node, Trim(loglet, offset)))
            elif self._memory is not None:
                memory_loglet = self._memory(loglet)
                if memory_loglet is not None:
                    memory_loglet.trim(offset)


__all__ = [
    "DONE",
    "FAILED",
    "PROPOSING",
    "READING",
    "SEALING",
    "CasChain",
    "Effect",
    "NewSegment",
    "ReadChain",
    "Reconfigure",
    "SendLoglet",
    "TrimLog",
    "placement",
]
