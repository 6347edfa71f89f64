"""A log-server with a simulated disk, for the loglet core tests."""

from __future__ import annotations

import msgspec

from catenary.core.loglet.log_server import LogServer, PutRecords, ReadPlan, StoreWrite
from catenary.core.loglet.types import Gap, Records, SequencerId, loglet_id

LOGLET = loglet_id(7, 1)
ME = SequencerId(1, 3)


class Node:
    """A log-server with a disk: writes become durable (and replies leave) on flush."""

    def __init__(self, node_id: int) -> None:
        self.core = LogServer(node_id)
        self.durable: list[StoreWrite] = []
        self.pending: list[StoreWrite] = []
        self.replies: list[tuple[int, msgspec.Struct]] = []
        self.reads: list[ReadPlan] = []

    def handle(self, src: int, message: msgspec.Struct) -> None:
        effects = self.core.handle(src, message)
        self.pending += effects.persist
        self.replies += effects.after_persist
        self.reads += effects.reads

    def answer(self, plan: ReadPlan) -> Records:
        """Fill a read plan from the durable records (as the log store does)."""
        held = self.held(plan.request.loglet, pending=True)
        runs: list[tuple[bytes, ...] | Gap] = []
        for run in plan.runs:
            if isinstance(run, Gap):
                runs.append(run)
            else:
                runs.append(tuple(held[o] for o in range(run[0], run[1])))
        m = plan.request
        return Records(
            m.loglet,
            m.from_offset,
            tuple(runs),
            plan.end_offset,
            plan.known_global_tail,
            plan.sealed,
        )

    def flush(self) -> list[tuple[int, msgspec.Struct]]:
        self.durable += self.pending
        self.pending = []
        out, self.replies = self.replies, []
        return out

    def crash(self) -> None:
        """Lose what was not durable; rebuild the core from the disk."""
        self.pending, self.replies = [], []
        self.core = LogServer(self.core.node_id)
        self.core.recover(self.durable)

    def held(self, loglet: int = LOGLET, *, pending: bool = False) -> dict[int, bytes]:
        """Durable records of ``loglet`` (trimmed ones too: the disk keeps them), and
        with ``pending`` those accepted but not yet durable."""
        out: dict[int, bytes] = {}
        for write in self.durable + (self.pending if pending else []):
            if isinstance(write, PutRecords) and write.loglet == loglet:
                for i, payload in enumerate(write.payloads):
                    assert out.setdefault(write.first_offset + i, payload) == payload
        return out
