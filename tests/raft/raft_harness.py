"""An in-memory cluster of RaftNodes driven step by step, plus a datadriven runner.

The harness plays the host exactly as ``Ready`` documents it: send ``messages``,
persist snapshot/entries/hard state into a per-node ``Stored`` record, send
``messages_after_persist``, apply ``committed`` entries to a toy state machine (a list of
applied payloads), collect ``reads``, then ``advance``.  Nothing moves unless a command
says so: messages wait in one network queue until delivered, so a scenario controls
every interleaving.  A "crash" throws the node and its in-memory state away and rebuilds
it from ``Stored`` only.

Scenario files (``testdata/*.txt``) are sequences of blocks::

    # comments
    command arg arg key=value
    ----
    expected output (never blank lines; "ok" when there is nothing to print)

separated by blank lines.  ``RAFT_REWRITE=1 pytest tests/raft`` rewrites the expected
blocks from the actual output.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

import msgspec

from catenary.core.raft.node import RaftNode, decode_conf_change, encode_conf_change
from catenary.core.raft.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Membership,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    ReadState,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    TimeoutNow,
)
from catenary.persist.raft_storage import RaftStorage
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import StoreConfig
from catenary.testing.sim.crashfs import CrashPointFileSystem, SimulatedCrash

_CONF_NAMES = {
    ConfChangeKind.ADD_LEARNER: "add-learner",
    ConfChangeKind.PROMOTE: "promote",
    ConfChangeKind.REMOVE: "remove",
}


def fmt_entry(e: Entry) -> str:
    if e.kind == EntryKind.NOOP:
        body = "noop"
    elif e.kind == EntryKind.CONFIG:
        cc = decode_conf_change(e.data)
        body = f"conf({_CONF_NAMES[ConfChangeKind(cc.kind)]} {cc.node})"
    else:
        body = repr(e.data.decode(errors="replace"))
    return f"{e.index}/{e.term} {body}"


def fmt_entries(entries: tuple[Entry, ...] | list[Entry]) -> str:
    if len(entries) > 4:
        return f"[{fmt_entry(entries[0])} .. {fmt_entry(entries[-1])} ({len(entries)})]"
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_msg(m: Message, rounds: bool = False) -> str:
    head = f"{m.src}->{m.dst} "
    if isinstance(m, RequestVote):
        kind = "PreVote" if m.pre_vote else "Vote"
        extra = " transfer" if m.transfer else ""
        return f"{head}{kind} t{m.term} last={m.last_log_index}/{m.last_log_term}{extra}"
    if isinstance(m, RequestVoteResponse):
        kind = "PreVoteResp" if m.pre_vote else "VoteResp"
        return f"{head}{kind} t{m.term} {'granted' if m.granted else 'rejected'}"
    if isinstance(m, AppendEntries):
        ctx = f" round={m.read_ctx}" if rounds and m.read_ctx else ""
        ents = f" {fmt_entries(m.entries)}" if m.entries else ""
        return f"{head}App t{m.term} prev={m.prev_index}/{m.prev_term}{ents} commit={m.commit}{ctx}"
    if isinstance(m, AppendEntriesResponse):
        ctx = f" round={m.read_ctx}" if rounds and m.read_ctx else ""
        if m.success:
            return f"{head}AppResp t{m.term} ok match={m.match_index}{ctx}"
        return (
            f"{head}AppResp t{m.term} reject idx={m.match_index} "
            f"hint={m.hint_index}/{m.hint_term}{ctx}"
        )
    if isinstance(m, InstallSnapshot):
        done = " done" if m.done else ""
        return (
            f"{head}Snap t{m.term} snap={m.meta.index}/{m.meta.term} "
            f"off={m.offset} len={len(m.chunk)}{done}"
        )
    if isinstance(m, InstallSnapshotResponse):
        flags = " done" if m.done else (" reject" if m.reject else "")
        return f"{head}SnapResp t{m.term} snap={m.index} next={m.next_offset}{flags}"
    assert isinstance(m, TimeoutNow)
    return f"{head}TimeoutNow t{m.term}"


@dataclass
class Stored:
    """What survives a crash: exactly what the host persisted."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            # An installed snapshot replaces the whole log (entries after it that the
            # leader sent arrive in rd.entries).
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            if self.entries:
                del self.entries[max(0, first - self.entries[0].index) :]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def compact(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > snap.meta.index]


class DiskStored(Stored):
    """``Stored`` kept by the real ``RaftStorage`` on a simulated disk (``cluster disk=sim``).

    The fields of ``Stored`` mirror what completed saves made durable (the
    persist-before-send check reads them); a restart rebuilds the node from what
    ``RaftStorage.load`` returns after the disk dropped everything unsynced, so a
    scenario can crash a node in the middle of a save (``crash-in-save``).
    """

    _RAFT_DIR = "/raft"

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.disk = SimFileSystem(Random(seed))
        self.fs = CrashPointFileSystem(self.disk)
        self.storage = self._open()

    def _open(self) -> RaftStorage:
        storage = RaftStorage.open(self.fs, self._RAFT_DIR, StoreConfig(segment_bytes_max=256))
        self.hard_state, self.snapshot, self.entries = storage.load()
        return storage

    def save(self, rd: Ready) -> None:
        self.storage.save(rd)
        super().save(rd)

    def compact(self, snap: Snapshot) -> None:
        self.storage.compact(snap.meta.index, snap)
        super().compact(snap)

    def save_until_crash(self, rd: Ready, operations: int) -> bool:
        """Run ``save`` with a crash after ``operations`` file operations; False when
        the save completed within them."""
        self.fs.arm(operations)
        try:
            self.storage.save(rd)
        except SimulatedCrash:
            return True
        finally:
            self.fs.disarm()
        return False

    def crash(self) -> None:
        self.disk.crash()

    def reload(self) -> None:
        self.storage = self._open()


def _check_persist_before_send(st: Stored, rd: Ready) -> None:
    """R2 end to end: promises leave only in messages_after_persist, and only once
    what they promise is in ``st`` (what a crash would leave)."""
    for m in rd.messages:
        assert not (isinstance(m, RequestVoteResponse) and m.granted and not m.pre_vote), m
        assert not (isinstance(m, AppendEntriesResponse) and m.success), m
        assert not (isinstance(m, InstallSnapshotResponse) and m.done), m
        assert not (isinstance(m, RequestVote) and not m.pre_vote), m
    for m in rd.messages_after_persist:
        # A later term on disk also binds: the node can never vote in m.term again.
        hs = st.hard_state
        if isinstance(m, RequestVoteResponse) and m.granted:
            assert hs.term > m.term or (hs.term, hs.vote) == (m.term, m.dst), (m, hs)
        elif isinstance(m, RequestVote):
            assert hs.term > m.term or (hs.term, hs.vote) == (m.term, m.src), (m, hs)
        elif isinstance(m, AppendEntriesResponse) and m.success:
            snap = st.snapshot.meta.index if st.snapshot else 0
            last = st.entries[-1].index if st.entries else snap
            assert m.match_index <= last, (m, last)
        elif isinstance(m, InstallSnapshotResponse) and m.done:
            snap = st.snapshot.meta.index if st.snapshot else 0
            last = st.entries[-1].index if st.entries else snap
            assert last >= m.index, (m, last)


_state_codec = msgspec.json.Encoder()
_msg_codec = msgspec.msgpack.Encoder()
_state_decoder = msgspec.json.Decoder(list[str])


class Cluster:
    def __init__(self, config: RaftConfig, seed: int = 0, disk: bool = False) -> None:
        self.config = config
        self.seed = seed
        self.disk = disk  # keep each node's state in RaftStorage on a simulated disk
        self.nodes: dict[int, RaftNode] = {}
        self.stored: dict[int, Stored] = {}
        self.applied: dict[int, list[str]] = {}
        self.reads: dict[int, list[ReadState]] = {}
        self.down: set[int] = set()
        self.net: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.restarts: dict[int, int] = {}
        # A host that bootstraps a node passes the same initial membership at every start
        # (the core ignores it once anything was persisted).
        self.initial: dict[int, Membership | None] = {}
        # A digest of every message delivered, in order: equal digests, equal runs.
        self.trace = hashlib.sha256()
        self.show_rounds = False
        self.pending: dict[
            int, Ready
        ] = {}  # taken Readies not yet persisted  # print the confirmation round appends carry

    # ------------------------------------------------------------ membership of the harness

    def add_node(self, nid: int, initial: Membership | None) -> None:
        self.stored[nid] = DiskStored(self.seed * 1000 + nid) if self.disk else Stored()
        self.restarts[nid] = 0
        self.initial[nid] = initial
        self.nodes[nid] = RaftNode(
            nid, self.config, Random(self.seed * 1000 + nid), initial_membership=initial
        )
        self.applied[nid] = []
        self.reads[nid] = []

    def crash(self, nid: int) -> None:
        self.down.add(nid)
        self.pending.pop(nid, None)  # never reached the disk
        st = self.stored[nid]
        if isinstance(st, DiskStored):
            st.crash()
        self.net = [m for m in self.net if m.dst != nid and m.src != nid]

    def restart(self, nid: int) -> None:
        st = self.stored[nid]
        if isinstance(st, DiskStored):
            st.reload()
        self.restarts[nid] += 1
        rng = Random(self.seed * 1000 + nid + 100 * self.restarts[nid])
        self.nodes[nid] = RaftNode(
            nid,
            self.config,
            rng,
            hard_state=st.hard_state,
            snapshot=st.snapshot,
            entries=list(st.entries),
            initial_membership=self.initial[nid],
        )
        self.applied[nid] = list(_state_decoder.decode(st.snapshot.data)) if st.snapshot else []
        self.reads[nid] = []
        self.down.discard(nid)

    # ----------------------------------------------------------------------------- network

    def linked(self, a: int, b: int) -> bool:
        return (a, b) not in self.cut and a not in self.down and b not in self.down

    def send(self, msgs: list[Message]) -> None:
        for m in msgs:
            if self.linked(m.src, m.dst):
                self.net.append(m)

    def deliver(self, nid: int, out: list[str] | None) -> int:
        mine = [m for m in self.net if m.dst == nid]
        self.net = [m for m in self.net if m.dst != nid]
        n = 0
        for m in mine:
            if not self.linked(m.src, m.dst):
                continue
            if out is not None:
                out.append(f"  {fmt_msg(m, self.show_rounds)}")
            self.step(m)
            n += 1
        return n

    def step(self, m: Message) -> None:
        self.trace.update(_msg_codec.encode(m))
        self.nodes[m.dst].step(m)

    # ---------------------------------------------------------------------------- readies

    def begin_ready(self, nid: int) -> bool:
        """Take a Ready and send its messages; its persistence comes later
        (``finish_ready``), and the node keeps stepping meanwhile, as with a slow disk."""
        node = self.nodes[nid]
        if nid in self.down or nid in self.pending or not node.has_ready():
            return False
        rd = node.ready()
        self.send(rd.messages)
        self.pending[nid] = rd
        return True

    def finish_ready(self, nid: int) -> bool:
        rd = self.pending.pop(nid, None)
        if rd is None:
            return False
        self._persist_apply_advance(nid, rd)
        return True

    def _persist_apply_advance(self, nid: int, rd: Ready) -> None:
        self.stored[nid].save(rd)
        _check_persist_before_send(self.stored[nid], rd)
        self.send(rd.messages_after_persist)
        if rd.snapshot is not None:
            self.applied[nid] = list(_state_decoder.decode(rd.snapshot.data))
        for e in rd.committed:
            self.applied[nid].append(
                e.data.decode(errors="replace") if e.kind == EntryKind.NORMAL else "-"
            )
        self.reads[nid].extend(rd.reads)
        self.nodes[nid].advance(rd)

    def send_ready(self, nid: int, out: list[str]) -> bool:
        """Take a Ready and send its messages; it is persisted by a later
        ``process-ready`` (or lost by a crash first), as on a host whose disk is slow."""
        node = self.nodes[nid]
        if nid in self.down or nid in self.pending or not node.has_ready():
            return False
        rd = node.ready()
        out.append(f"> {nid} ready (persistence pending)")
        out += [f"  {ln}" for ln in self._describe(rd)]
        self.send(rd.messages)
        self.pending[nid] = rd
        return True

    def crash_in_save(self, nid: int, operations: int, out: list[str]) -> None:
        """Take a Ready, send its messages and crash the node after ``operations``
        file operations of its save."""
        st = self.stored[nid]
        assert isinstance(st, DiskStored), "crash-in-save needs cluster disk=sim"
        node = self.nodes[nid]
        assert nid not in self.pending and node.has_ready()
        rd = node.ready()
        out.append(f"> {nid} ready")
        out += [f"  {ln}" for ln in self._describe(rd)]
        self.send(rd.messages)
        if st.save_until_crash(rd, operations):
            out.append(f"  crashed after {operations} file operations of its save")
        else:
            out.append(f"  saved within {operations} file operations, then crashed")
        self.crash(nid)

    def process_ready(self, nid: int, out: list[str] | None) -> bool:
        if self.finish_ready(nid):
            return True
        node = self.nodes[nid]
        if nid in self.down or not node.has_ready():
            return False
        rd = node.ready()
        if out is not None:
            out.append(f"> {nid} ready")
            out += [f"  {ln}" for ln in self._describe(rd)]
        self.send(rd.messages)
        self._persist_apply_advance(nid, rd)
        return True

    def _describe(self, rd: Ready) -> list[str]:
        lines: list[str] = []
        if rd.hard_state is not None:
            hs = rd.hard_state
            lines.append(f"hs term={hs.term} vote={hs.vote} commit={hs.commit}")
        if rd.snapshot is not None:
            s = rd.snapshot.meta
            lines.append(f"snapshot {s.index}/{s.term} voters={s.membership.voters}")
        if rd.entries:
            lines.append(f"persist {fmt_entries(rd.entries)}")
        lines += [f"send {self._fmt_sent(m)}" for m in rd.messages]
        lines += [f"send-after-persist {self._fmt_sent(m)}" for m in rd.messages_after_persist]
        if rd.committed:
            lines.append(f"apply {fmt_entries(rd.committed)}")
        lines += [f"read ctx={r.ctx} index={r.index}" for r in rd.reads]
        if rd.want_snapshot:
            lines.append("want-snapshot")
        return lines

    def _fmt_sent(self, m: Message) -> str:
        return fmt_msg(m, self.show_rounds) + (
            "" if self.linked(m.src, m.dst) else " (lost: partition)"
        )

    def compact(self, nid: int) -> int:
        node = self.nodes[nid]
        index = node.applied_index
        node.compact(index, _state_codec.encode(self.applied[nid]))
        snap = node.latest_snapshot
        assert snap is not None and snap.meta.index == index
        self.stored[nid].compact(snap)
        return index

    def stabilize(self, out: list[str] | None, limit: int = 10_000) -> None:
        for _ in range(limit):
            progressed = False
            for nid in sorted(self.nodes):
                progressed |= self.process_ready(nid, out)
            for nid in sorted(self.nodes):
                if nid in self.down:
                    continue
                if any(m.dst == nid for m in self.net):
                    if out is not None:
                        out.append(f"> {nid} receive")
                    progressed |= self.deliver(nid, out) > 0
            if not progressed and not self.net:
                return
        raise AssertionError("cluster did not stabilize")


# --------------------------------------------------------------------------- datadriven


@dataclass
class Block:
    comments: list[str]
    command: str
    expected: list[str]


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        comments: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("#")):
            if lines[i].startswith("#"):
                comments.append(lines[i])
            elif comments:
                comments.append("")
            i += 1
        if i >= len(lines):
            break
        command = lines[i]
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ValueError(f"line {i}: expected ---- after {command!r}")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        while comments and comments[-1] == "":
            comments.pop()
        blocks.append(Block(comments, command, expected))
    return blocks


def render(blocks: list[Block], outputs: list[list[str]]) -> str:
    parts: list[str] = []
    for b, out in zip(blocks, outputs, strict=True):
        head = "\n".join([*b.comments, b.command, "----", *out])
        parts.append(head)
    return "\n\n".join(parts) + "\n"


def _ids(arg: str) -> list[int]:
    return [int(x) for x in arg.split(",") if x]


def _config(kv: dict[str, str]) -> RaftConfig:
    names = {
        "election": "election_timeout_ticks",
        "heartbeat": "heartbeat_interval_ticks",
        "max_entries": "max_entries_per_message",
        "max_bytes": "max_bytes_per_message",
        "inflight": "max_inflight_messages",
        "chunk": "snapshot_chunk_bytes",
        "compact_entries": "compact_after_entries",
        "compact_bytes": "compact_after_bytes",
        "pre_vote": "pre_vote",
        "check_quorum": "check_quorum",
        "lease": "lease_reads",
        "drift": "lease_drift_ticks",
        "eager_commit": "eager_commit_broadcast",
    }
    # The scripts show every message: they were written with the commit told to
    # followers at once (an empty append), which keeps each step's effect visible.
    fields: dict[str, object] = {"eager_commit_broadcast": True}
    for k, v in kv.items():
        if k not in names:
            raise ValueError(f"unknown config key {k}")
        fields[names[k]] = v == "true" if v in ("true", "false") else int(v)
    return RaftConfig(**fields)  # type: ignore[arg-type]


class Runner:
    def __init__(self) -> None:
        self.cluster: Cluster | None = None
        self.ctx = 0

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None, "start with: cluster voters=..."
        return self.cluster

    def run(self, command: str) -> list[str]:
        words = command.split()
        cmd, args = words[0], words[1:]
        pos = [a for a in args if "=" not in a]
        kv = dict(a.split("=", 1) for a in args if "=" in a)
        out: list[str] = []
        handler = getattr(self, "cmd_" + cmd.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown command {cmd}")
        handler(pos, kv, out)
        return out or ["ok"]

    # cluster voters=1,2,3 [learners=4] [seed=N] [config keys...]
    def cmd_cluster(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        voters = tuple(_ids(kv.pop("voters")))
        learners = tuple(_ids(kv.pop("learners", "")))
        seed = int(kv.pop("seed", "0"))
        disk = kv.pop("disk", "") == "sim"
        self.cluster = Cluster(_config(kv), seed, disk)
        for nid in sorted(voters + learners):
            self.cluster.add_node(nid, Membership(voters=voters, learners=learners))

    # show-rounds: print the read-confirmation round every append carries
    def cmd_show_rounds(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        self.c.show_rounds = True

    # add-node 4: an empty node that learns membership from the leader
    def cmd_add_node(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            self.c.add_node(nid, None)

    def cmd_campaign(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        self.c.nodes[int(pos[0])].campaign()

    # tick 1,2,3 [n=5]
    def cmd_tick(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        ids = _ids(pos[0]) if pos else sorted(self.c.nodes)
        for _ in range(int(kv.get("n", "1"))):
            for nid in ids:
                if nid not in self.c.down:
                    self.c.nodes[nid].tick()

    def cmd_process_ready(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            self.c.process_ready(nid, out)

    # send-ready 1: send a Ready's messages, persist it at the next process-ready
    def cmd_send_ready(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            self.c.send_ready(nid, out)

    # crash-in-save 3 ops=6: the next Ready's save stops after 6 file operations
    def cmd_crash_in_save(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        self.c.crash_in_save(int(pos[0]), int(kv["ops"]), out)

    # stored 3: what the node's storage holds (on disk=sim: what load returned)
    def cmd_stored(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            st = self.c.stored[nid]
            hs = st.hard_state
            log = fmt_entries(st.entries) if st.entries else "[]"
            out.append(f"{nid}: hs term={hs.term} vote={hs.vote} commit={hs.commit} log={log}")

    def cmd_deliver(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            out.append(f"> {nid} receive")
            self.c.deliver(nid, out)

    # drop 1,2: lose every message queued for these nodes
    def cmd_drop(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        ids = set(_ids(pos[0]))
        for m in self.c.net:
            if m.dst in ids:
                out.append(f"dropped {fmt_msg(m)}")
        self.c.net = [m for m in self.c.net if m.dst not in ids]

    # stabilize [quiet]
    def cmd_stabilize(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        self.c.stabilize(None if "quiet" in pos else out)

    # partition 1 2,3: cut every link between the groups (both ways)
    def cmd_partition(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        groups = [_ids(p) for p in pos]
        for i, g in enumerate(groups):
            for h in groups[i + 1 :]:
                for a in g:
                    for b in h:
                        self.c.cut.add((a, b))
                        self.c.cut.add((b, a))

    def cmd_heal(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        self.c.cut.clear()

    def cmd_propose(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        node = self.c.nodes[int(pos[0])]
        try:
            if len(pos) > 2:
                idx = node.propose_batch([p.encode() for p in pos[1:]])
            else:
                idx = node.propose(pos[1].encode())
            out.append(f"index {idx}")
        except NotLeader as exc:
            out.append(f"NotLeader(hint={exc.leader_hint})")
        except ProposalDropped as exc:
            out.append(f"ProposalDropped({exc})")

    # conf-change 1 add-learner 4
    def cmd_conf_change(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        node = self.c.nodes[int(pos[0])]
        kind = {v: k for k, v in _CONF_NAMES.items()}[pos[1]]
        try:
            idx = node.propose_conf_change(ConfChange(kind, int(pos[2])))
            out.append(f"index {idx}")
        except NotLeader as exc:
            out.append(f"NotLeader(hint={exc.leader_hint})")
        except (ProposalDropped, ValueError) as exc:
            out.append(f"{type(exc).__name__}({exc})")

    def cmd_read_index(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        node = self.c.nodes[int(pos[0])]
        self.ctx += 1
        try:
            node.read_index(self.ctx)
            out.append(f"ctx {self.ctx}")
        except NotLeader as exc:
            out.append(f"NotLeader(hint={exc.leader_hint})")

    def cmd_reads(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            rs = self.c.reads[nid]
            out.append(f"{nid}: " + (" ".join(f"{r.ctx}@{r.index}" for r in rs) or "none"))

    def cmd_transfer(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        try:
            self.c.nodes[int(pos[0])].transfer_leadership(int(pos[1]))
        except NotLeader as exc:
            out.append(f"NotLeader(hint={exc.leader_hint})")

    def cmd_compact(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            out.append(f"{nid}: compacted to {self.c.compact(nid)}")

    def cmd_crash(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            self.c.crash(nid)

    def cmd_restart(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            self.c.restart(nid)

    def cmd_status(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        ids = _ids(pos[0]) if pos else sorted(self.c.nodes)
        for nid in ids:
            if nid in self.c.down:
                out.append(f"{nid}: down")
                continue
            s = self.c.nodes[nid].status()
            m = s.membership
            learners = f" learners={','.join(map(str, m.learners))}" if m.learners else ""
            out.append(
                f"{nid}: {s.role} term={s.term} leader={s.leader} commit={s.commit} "
                f"applied={s.applied} last={s.last_index} "
                f"voters={','.join(map(str, m.voters))}{learners}"
            )
            if "peers" in kv:
                for pid, p in s.peers.items():
                    lrn = " learner" if p.learner else ""
                    out.append(f"  {pid}: {p.state} match={p.match} next={p.next}{lrn}")

    def cmd_log(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            node = self.c.nodes[nid]
            ents = node.entries(0, node.last_index + 1)
            snap = node.snapshot_index
            head = f"{nid}: snap={snap} " if snap else f"{nid}: "
            out.append(head + (fmt_entries(ents) if ents else "[]"))

    def cmd_applied(self, pos: list[str], kv: dict[str, str], out: list[str]) -> None:
        for nid in _ids(pos[0]):
            out.append(f"{nid}: {' '.join(self.c.applied[nid]) or '(none)'}")


def run_file(path: Path) -> tuple[str, str]:
    """Run a scenario; returns (expected text, actual text)."""
    text = path.read_text()
    blocks = parse(text)
    runner = Runner()
    outputs = [runner.run(b.command) for b in blocks]
    actual = render(blocks, outputs)
    expected = render(blocks, [b.expected for b in blocks])
    if os.environ.get("RAFT_REWRITE") == "1":
        path.write_text(actual)
        return actual, actual
    return expected, actual


__all__ = ["Cluster", "Runner", "encode_conf_change", "fmt_msg", "run_file"]
