"""Seal a replicated loglet, find its tail and repair it (sans-IO).

Theory of operation
-------------------
A ``TailFinder`` runs once per seal-and-find-tail (rules T1-T3 of
docs/design/log.md).  The host feeds it the answers of the log-servers and
ticks it; it hands out the requests to send.  Phases:

1. **seal**: ``Seal`` to the whole nodeset.  Once the servers that answered
   ``Sealed`` form an f-majority F, no write quorum can form among the others,
   so no later append is acknowledged (T1); the tail candidate ``T`` is the
   highest local tail in F (T2).
2. **digest**: ``GetDigest [1, T)`` to the nodeset; it waits for every server
   of F (and uses whatever else arrives).  Offsets at or below the highest
   trim point are gone and skipped.  The range is cut where any server's held
   runs start or end, so each piece has one set of holders.
3. **repair**: each piece whose holders do not form a write quorum is read from
   its lowest holder (``GetRecords`` with ``T`` as the reader's tail; the server
   does not adopt it) and copied with repair stores to servers that lack it —
   servers of F first, then the others, in node order — until holders and
   copies form a write quorum.  Every offset below ``T`` has a holder in F: a
   server's records are in order or above a committed gap (LS2), and committed
   records are on a write quorum, which meets F.  A piece with no holder at
   all (a wiped disk) is reported in ``lost``, not invented.
4. **done**: ``Tail(T)`` goes to the nodeset, so servers serve up to ``T``;
   ``tail`` is ``T``.  The caller records it in the chain before reporting it
   (T4): a second finder that raced this one adopts the recorded tail.

Requests not answered within ``resend_ticks`` are sent again; every message
is idempotent at the log-server.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import msgspec

from catenary.core.loglet.replication import NodeId, NodeSetChecker, ReplicationProperty
from catenary.core.loglet.types import (
    OK,
    Digest,
    Gap,
    GetDigest,
    GetRecords,
    LogletId,
    Offset,
    Records,
    Seal,
    Sealed,
    SequencerId,
    Store,
    Stored,
    Tail,
)

SEALING = "sealing"
DIGESTING = "digesting"
REPAIRING = "repairing"
DONE = "done"


class FinderConfig(msgspec.Struct, frozen=True):
    resend_ticks: int = 10
    read_bytes_max: int = 1 << 20

    def __post_init__(self) -> None:
        if self.resend_ticks < 1 or self.read_bytes_max < 1:
            raise ValueError("resend_ticks and read_bytes_max must be >= 1")


class _Piece(msgspec.Struct):
    start: Offset
    end: Offset
    holders: set[NodeId]
    targets: list[NodeId]  # who receives the copies, in order
    next_read: Offset  # first offset not yet read from the source
    acked: dict[NodeId, dict[Offset, Offset]]  # per target: stored [first, end)
    prefix: dict[NodeId, Offset]  # per target: every offset below it is stored

    def copied(self) -> set[NodeId]:
        return {node for node, end in self.prefix.items() if end >= self.end}


class TailFinder:
    """Seal, find the tail, repair it to write quorums (T1-T3)."""

    def __init__(
        self,
        loglet: LogletId,
        nodeset: Sequence[NodeId],
        replication: ReplicationProperty,
        repairer: SequencerId,
        *,
        locations: Mapping[NodeId, str] | None = None,
        config: FinderConfig | None = None,
    ) -> None:
        self.loglet = loglet
        self.nodeset = tuple(sorted(set(nodeset)))
        self.checker = NodeSetChecker(self.nodeset, replication, locations)
        self.repairer = repairer
        self.config = config or FinderConfig()
        self.phase = SEALING
        self.tail: Offset | None = None
        self.lost: list[tuple[Offset, Offset]] = []
        self._sealed: dict[NodeId, Offset] = {}
        self._digests: dict[NodeId, Digest] = {}
        self._candidate: Offset = 0
        self._pieces: list[_Piece] = []
        self._sent: dict[tuple[NodeId, Offset], Offset] = {}  # (target, first) -> end
        self._ticks = 0
        self._last_sent = 0
        self._messages: list[tuple[NodeId, msgspec.Struct]] = []
        self._send_phase()

    @property
    def done(self) -> bool:
        return self.phase == DONE

    @property
    def repaired_records(self) -> int:
        """Records copied to complete a write quorum (pieces finished so far)."""
        return sum(p.end - p.start for p in self._pieces if self._piece_done(p))

    def take_messages(self) -> list[tuple[NodeId, msgspec.Struct]]:
        out, self._messages = self._messages, []
        return out

    def tick(self) -> None:
        self._ticks += 1
        if self.phase != DONE and self._ticks - self._last_sent >= self.config.resend_ticks:
            self._send_phase()

    def on_message(self, src: NodeId, m: msgspec.Struct) -> None:
        if src not in self.nodeset or getattr(m, "loglet", None) != self.loglet:
            return
        match m:
            case Sealed(local_tail=tail) if self.phase == SEALING:
                self._sealed[src] = tail
                if self.checker.is_f_majority(self._sealed):
                    self._candidate = max(self._sealed.values())
                    self.phase = DIGESTING
                    self._send_phase()
            case Digest() if self.phase == DIGESTING:
                self._digests[src] = m
                if set(self._sealed) <= set(self._digests):
                    self._plan()
            case Records() if self.phase == REPAIRING:
                self._on_records(src, m)
            case Stored() if self.phase == REPAIRING:
                self._on_stored(src, m)
            case _:
                pass

    # ---------------------------------------------------------- internals

    def _send_phase(self) -> None:
        self._last_sent = self._ticks
        if self.phase == SEALING:
            for node in self.nodeset:
                if node not in self._sealed:
                    self._messages.append((node, Seal(self.loglet)))
        elif self.phase == DIGESTING:
            for node in self.nodeset:
                if node not in self._digests:
                    self._messages.append(
                        (node, GetDigest(self.loglet, 1, max(self._candidate, 1)))
                    )
        elif self.phase == REPAIRING:
            for piece in self._pieces:
                if not self._piece_done(piece):
                    self._request_piece(piece, resend=True)
                    return

    def _plan(self) -> None:
        tail = self._candidate
        trim = max(d.trim_point for d in self._digests.values())
        start = trim + 1
        cuts = {start, tail}
        for digest in self._digests.values():
            for a, b in digest.held:
                cuts.update(x for x in (a, b) if start < x < tail)
        points = sorted(c for c in cuts if start <= c <= tail)
        pieces: list[_Piece] = []
        for a, b in itertools.pairwise(points):
            holders = {
                node
                for node, digest in self._digests.items()
                if any(x <= a and b <= y for x, y in digest.held)
            }
            if self.checker.is_write_quorum(holders):
                continue
            if not holders:
                self.lost.append((a, b))
                continue
            targets = self._targets(holders)
            pieces.append(_Piece(a, b, holders, targets, a, {}, {}))
        self._pieces = pieces
        self.phase = REPAIRING
        self._next_piece()

    def _targets(self, holders: set[NodeId]) -> list[NodeId]:
        """Servers to copy to, until holders and copies form a write quorum."""
        chosen: list[NodeId] = []
        order = [n for n in self.nodeset if n in self._sealed] + [
            n for n in self.nodeset if n not in self._sealed
        ]
        for node in order:
            if node in holders:
                continue
            chosen.append(node)
            if self.checker.is_write_quorum(holders | set(chosen)):
                break
        return chosen

    def _piece_done(self, piece: _Piece) -> bool:
        return self.checker.is_write_quorum(piece.holders | piece.copied())

    def _next_piece(self) -> None:
        for piece in self._pieces:
            if not self._piece_done(piece):
                self._request_piece(piece, resend=False)
                return
        self._finish()

    def _request_piece(self, piece: _Piece, *, resend: bool) -> None:
        self._last_sent = self._ticks
        if resend:
            # Read again from the lowest point a target is missing (stores are idempotent).
            piece.next_read = min(piece.prefix.get(t, piece.start) for t in piece.targets)
        source = min(piece.holders)
        self._messages.append(
            (
                source,
                GetRecords(
                    self.loglet,
                    piece.next_read,
                    piece.end,
                    self.config.read_bytes_max,
                    self._candidate,
                ),
            )
        )

    def _current(self) -> _Piece | None:
        for piece in self._pieces:
            if not self._piece_done(piece):
                return piece
        return None

    def _on_records(self, src: NodeId, m: Records) -> None:
        piece = self._current()
        if piece is None or src != min(piece.holders) or m.first_offset != piece.next_read:
            return
        offset = m.first_offset
        for run in m.runs:
            if isinstance(run, Gap):
                offset = run.to_offset
                continue
            run_end = min(offset + len(run), piece.end)
            payloads = tuple(run[: run_end - offset])
            if payloads:
                for target in piece.targets:
                    self._sent[(target, offset)] = run_end
                    self._messages.append(
                        (
                            target,
                            Store(self.loglet, self.repairer, offset, payloads, 1, repair=True),
                        )
                    )
            offset = run_end
        piece.next_read = max(piece.next_read, min(m.next_offset, piece.end))
        if piece.next_read < piece.end:
            self._request_piece(piece, resend=False)

    def _on_stored(self, src: NodeId, m: Stored) -> None:
        piece = self._current()
        if piece is None or src not in piece.targets or m.status != OK:
            return
        pending = self._sent.get((src, m.first_offset))
        if pending is None:
            return
        acked = piece.acked.setdefault(src, {})
        acked[m.first_offset] = pending
        prefix = piece.prefix.get(src, piece.start)
        while prefix in acked:
            prefix = acked[prefix]
        piece.prefix[src] = prefix
        if self._piece_done(piece):
            self._next_piece()

    def _finish(self) -> None:
        self.phase = DONE
        self.tail = self._candidate
        for node in self.nodeset:
            self._messages.append((node, Tail(self.loglet, self._candidate)))
