"""A virtual log: the chain of segments kept in the metadata service (sans-IO).

Theory of operation
-------------------
A log's chain lives under the metadata key ``logs/<log id>`` and changes only
by compare-and-set on that key's version, so every change is decided once for
the whole cluster.  The functions here compute a *new* chain from an old one;
the caller (the bifrost host) writes it with the old version as precondition.

Rules (docs/design/log.md, B1-B3; the tests check each):

C1  Segments are ordered by index and base LSN; indexes grow by one; each
    segment's base is at or above the previous one's.  Segment ``i`` holds
    LSNs ``[base_i, base_{i+1})``; the last segment is open-ended and is the
    only one that takes appends.
C2  ``extend`` adds a segment at the sealed tail of the last one: the caller
    has sealed it and found its tail (T, an offset), and the new base is
    ``base + T - 1``.  A base below the last segment's base is refused.
C3  Of two racing extensions, the compare-and-set admits one; the loser reads
    the chain again and ``adopt`` tells it whether the winner already moved the
    tail past the segment it sealed (then it uses the winner's segment).
C4  ``trim`` never goes back, is clipped to the committed tail the caller
    knows, and drops the whole segments that end at or below the new trim
    point — never the last segment.  It answers the effective trim point and
    the dropped segments, so a trim never silently does nothing.
C5  A segment whose base equals the next one's base is empty (sealed before
    its first record); lookups skip it.
"""

from __future__ import annotations

import msgspec

from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.types import LogId, LogletId, Lsn, SequencerId, loglet_id

REPLICATED = "replicated"
LOCAL = "local"
MEMORY = "memory"
PROVIDERS = (REPLICATED, LOCAL, MEMORY)

CHAIN_KEY_PREFIX = "logs/"


def chain_key(log_id: LogId) -> str:
    return f"{CHAIN_KEY_PREFIX}{log_id}"


class ChainError(ValueError):
    """A chain change that would break the chain's rules; the message says which."""


class ReplicatedParams(msgspec.Struct, array_like=True, frozen=True):
    sequencer: SequencerId
    nodeset: tuple[int, ...]
    replication: ReplicationProperty


class LocalParams(msgspec.Struct, array_like=True, frozen=True):
    node: int  # the one node whose store holds the segment


class Segment(msgspec.Struct, array_like=True, frozen=True):
    index: int
    base_lsn: Lsn
    provider: str
    replicated: ReplicatedParams | None = None
    local: LocalParams | None = None

    def loglet(self, log_id: LogId) -> LogletId:
        return loglet_id(log_id, self.index)


class Chain(msgspec.Struct, array_like=True, frozen=True):
    log_id: LogId
    segments: tuple[Segment, ...]
    trim_point: Lsn = 0  # records at or below it are trimmed

    def __post_init__(self) -> None:
        if not self.segments:
            raise ChainError(f"log {self.log_id}: a chain needs at least one segment")
        previous: Segment | None = None
        for segment in self.segments:
            if segment.provider not in PROVIDERS:
                raise ChainError(f"log {self.log_id}: unknown provider {segment.provider!r}")
            if segment.base_lsn < 1:
                raise ChainError(f"log {self.log_id}: segment base {segment.base_lsn} < 1")
            if segment.provider == REPLICATED and segment.replicated is None:
                raise ChainError(f"log {self.log_id}: replicated segment without parameters")
            if segment.provider == LOCAL and segment.local is None:
                raise ChainError(f"log {self.log_id}: local segment without its node")
            if previous is not None:
                if segment.index != previous.index + 1:
                    raise ChainError(
                        f"log {self.log_id}: segment {segment.index} after {previous.index}"
                    )
                if segment.base_lsn < previous.base_lsn:
                    raise ChainError(
                        f"log {self.log_id}: segment {segment.index} base {segment.base_lsn} "
                        f"below the previous base {previous.base_lsn}"
                    )
            previous = segment

    @property
    def tail(self) -> Segment:
        return self.segments[-1]

    def end_of(self, segment: Segment) -> Lsn | None:
        """First LSN after ``segment`` (None: the open tail segment)."""
        position = segment.index - self.segments[0].index
        if position + 1 < len(self.segments):
            return self.segments[position + 1].base_lsn
        return None

    def find(self, lsn: Lsn) -> Segment | None:
        """The segment holding ``lsn`` (C1, C5); None below the first segment."""
        found: Segment | None = None
        for segment in self.segments:
            if segment.base_lsn <= lsn:
                found = segment
            else:
                break
        return found

    def segment(self, index: int) -> Segment | None:
        position = index - self.segments[0].index
        if 0 <= position < len(self.segments):
            return self.segments[position]
        return None


def extend(
    chain: Chain,
    sealed_index: int,
    sealed_tail_offset: int,
    provider: str,
    *,
    replicated: ReplicatedParams | None = None,
    local: LocalParams | None = None,
) -> Chain:
    """The chain with a new segment after the sealed segment ``sealed_index`` (C2)."""
    tail = chain.tail
    if sealed_index != tail.index:
        raise ChainError(
            f"log {chain.log_id}: segment {sealed_index} is not the tail ({tail.index})"
        )
    if sealed_tail_offset < 1:
        raise ChainError(f"log {chain.log_id}: a tail offset is at least 1")
    base = tail.base_lsn + sealed_tail_offset - 1
    segment = Segment(tail.index + 1, base, provider, replicated, local)
    return Chain(chain.log_id, (*chain.segments, segment), chain.trim_point)


def adopt(current: Chain, sealed_index: int) -> Segment | None:
    """After a lost compare-and-set (C3): the winner's segment if it already moved
    the tail past ``sealed_index``, else None (try again on ``current``)."""
    if current.tail.index > sealed_index:
        return current.tail
    return None


def trim(chain: Chain, lsn: Lsn, committed_tail: Lsn) -> tuple[Chain, Lsn, tuple[Segment, ...]]:
    """(new chain, effective trim point, dropped segments) for trimming through ``lsn`` (C4).

    ``committed_tail`` is the first LSN not known committed: nothing at or past
    it is trimmed.
    """
    point = max(chain.trim_point, min(lsn, committed_tail - 1))
    kept: list[Segment] = []
    dropped: list[Segment] = []
    segments = chain.segments
    for position, segment in enumerate(segments):
        end = segments[position + 1].base_lsn if position + 1 < len(segments) else None
        if end is not None and end <= point + 1:
            dropped.append(segment)
        else:
            kept.append(segment)
    return Chain(chain.log_id, tuple(kept), point), point, tuple(dropped)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Chain)


def encode_chain(chain: Chain) -> bytes:
    return _encoder.encode(chain)


def decode_chain(data: bytes) -> Chain:
    """Raises ``ChainError`` on bytes that are not a valid chain."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ChainError(f"stored chain is invalid: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ChainError(f"stored chain is undecodable: {exc}") from exc
