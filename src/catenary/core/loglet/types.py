"""Identifiers and messages of the replicated loglet (docs/design/log.md).

Messages are frozen msgspec Structs with a tag, so the peer transport encodes
them like Raft's; requests are imperative, replies past tense.
"""

from __future__ import annotations

import msgspec

LogId = int  # u32
Lsn = int  # u64; the first record of a log is 1; 0 means "none"
Offset = int  # position inside one loglet; the first is 1
LogletId = int  # (log_id << 32) | segment_index

LSN_MAX = (1 << 64) - 1
LOG_ID_MAX = (1 << 32) - 1
OFFSET_NONE = 0


def loglet_id(log_id: LogId, segment_index: int) -> LogletId:
    if not 0 <= log_id <= LOG_ID_MAX:
        raise ValueError(f"log id {log_id} is outside [0, {LOG_ID_MAX}]")
    if not 0 <= segment_index < 1 << 32:
        raise ValueError(f"segment index {segment_index} is outside [0, 2^32)")
    return (log_id << 32) | segment_index


def split_loglet_id(loglet: LogletId) -> tuple[LogId, int]:
    return loglet >> 32, loglet & 0xFFFF_FFFF


def to_lsn(base_lsn: Lsn, offset: Offset) -> Lsn:
    """The LSN of ``offset`` in a segment whose first record is at ``base_lsn``."""
    return base_lsn + offset - 1


def to_offset(base_lsn: Lsn, lsn: Lsn) -> Offset:
    return lsn - base_lsn + 1


class SequencerId(msgspec.Struct, array_like=True, frozen=True, order=True):
    """The one writer of a loglet: a node in one of its generations (``N2:7``)."""

    node: int
    generation: int

    def __str__(self) -> str:
        return f"N{self.node}:{self.generation}"


# ----------------------------------------------------------------- requests


class Store(msgspec.Struct, tag="st", array_like=True, frozen=True):
    loglet: LogletId
    sequencer: SequencerId
    first_offset: Offset
    payloads: tuple[bytes, ...]
    known_global_tail: Offset
    repair: bool = False  # a repair store: accepted after a seal, never pins


class Seal(msgspec.Struct, tag="sl", array_like=True, frozen=True):
    loglet: LogletId


class GetLogletInfo(msgspec.Struct, tag="gi", array_like=True, frozen=True):
    loglet: LogletId


class GetRecords(msgspec.Struct, tag="gr", array_like=True, frozen=True):
    loglet: LogletId
    from_offset: Offset
    to_offset: Offset  # exclusive
    bytes_max: int
    known_global_tail: Offset


class GetDigest(msgspec.Struct, tag="gd", array_like=True, frozen=True):
    loglet: LogletId
    from_offset: Offset
    to_offset: Offset  # exclusive


class Trim(msgspec.Struct, tag="tr", array_like=True, frozen=True):
    loglet: LogletId
    trim_point: Offset  # records at or below it are discarded


class WaitForTail(msgspec.Struct, tag="wt", array_like=True, frozen=True):
    """Answer ``LogletInfo`` once the known global tail is above ``offset`` or the
    loglet is sealed (at once if it already is)."""

    loglet: LogletId
    offset: Offset


class Tail(msgspec.Struct, tag="tl", array_like=True, frozen=True):
    """The sequencer releases the global tail when no store is in flight to carry it."""

    loglet: LogletId
    global_tail: Offset


# ------------------------------------------------------------------ replies

OK = "ok"
SEALED = "sealed"
WRONG_SEQUENCER = "wrong_sequencer"
MALFORMED = "malformed"
OUT_OF_ORDER = "out_of_order"  # resend from the reported local tail


class Stored(msgspec.Struct, tag="sd", array_like=True, frozen=True):
    loglet: LogletId
    first_offset: Offset  # of the store this answers
    status: str  # OK | SEALED | WRONG_SEQUENCER | MALFORMED | OUT_OF_ORDER
    local_tail: Offset


class Sealed(msgspec.Struct, tag="sld", array_like=True, frozen=True):
    loglet: LogletId
    local_tail: Offset


class LogletInfo(msgspec.Struct, tag="li", array_like=True, frozen=True):
    loglet: LogletId
    local_tail: Offset
    known_global_tail: Offset
    sealed: bool
    trim_point: Offset


class Gap(msgspec.Struct, frozen=True):
    """Offsets ``[from_offset, to_offset)`` the answer holds no record for.

    Encoded as a map (not an array), so a ``Records`` run decodes unambiguously
    as a tuple of payloads or a ``Gap``."""

    from_offset: Offset
    to_offset: Offset
    kind: str  # "trim" (below the trim point) | "absent" (not on this server)


class Records(msgspec.Struct, tag="rc", array_like=True, frozen=True):
    """Records from ``first_offset`` on, in order, with gaps between runs.

    ``runs`` alternate as the reader meets them: a ``bytes`` tuple is a run of
    records at consecutive offsets; a ``Gap`` skips offsets.  ``next_offset``
    is where the reader continues (the answer was cut by the byte budget, the
    server's local tail or the global tail).
    """

    loglet: LogletId
    first_offset: Offset
    runs: tuple[tuple[bytes, ...] | Gap, ...]
    next_offset: Offset
    known_global_tail: Offset
    sealed: bool


class Digest(msgspec.Struct, tag="dg", array_like=True, frozen=True):
    loglet: LogletId
    held: tuple[tuple[Offset, Offset], ...]  # half-open ranges held, in order
    local_tail: Offset
    trim_point: Offset


class Trimmed(msgspec.Struct, tag="td", array_like=True, frozen=True):
    loglet: LogletId
    trim_point: Offset


LogletMessage = (
    Store
    | Seal
    | GetLogletInfo
    | GetRecords
    | GetDigest
    | Trim
    | Tail
    | WaitForTail
    | Stored
    | Sealed
    | LogletInfo
    | Records
    | Digest
    | Trimmed
)
