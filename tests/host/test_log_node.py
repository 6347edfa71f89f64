"""LogNode, sans-IO: routing by actor address, forwarded appends, N1-N3 (host/log_node.py).

Two or three ``LogNode`` instances talk over an in-memory list of messages;
each runs a real ``LogServerLoop`` over a ``LogStore`` on its own simulated
file system (as ``testing/sim/log.py`` builds them) and a real
``SequencerLoop``.  Persistence jobs are executed at once when a node polls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random

import msgspec

from catenary.core.bifrost.chain import REPLICATED, Chain, ReplicatedParams, Segment
from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.sequencer import SequencerConfig
from catenary.core.loglet.types import GetLogletInfo, LogletInfo, SequencerId
from catenary.host.log_node import (
    APPENDER,
    LOG_SERVER,
    SEQUENCER,
    AppendDone,
    Appended,
    Envelope,
    ForwardAppend,
    LogNode,
    address,
    envelope_decoder,
)
from catenary.host.log_server import LogServerLoop, LogServerOutput
from catenary.host.sequencer import AppendTimeout, NotSequencer, SequencerLoop
from catenary.persist.log_store import LogStore
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import StoreConfig

LOG = 3
R2 = ReplicationProperty(node=2)
SECOND = 1_000_000  # microseconds
_encoder = msgspec.msgpack.Encoder()


def chain(sequencer: SequencerId, nodeset: tuple[int, ...] = (1, 2, 3), index: int = 0) -> Chain:
    params = ReplicatedParams(sequencer, nodeset, R2)
    return Chain(LOG, (Segment(index, 1, REPLICATED, replicated=params),))


@dataclass
class _Recorder:
    """A dynamic actor: what reached it, and from which node."""

    got: list[tuple[int, msgspec.Struct]] = field(default_factory=list)

    def on_message(self, src: int, message: msgspec.Struct) -> None:
        self.got.append((src, message))


class Net:
    """Nodes, an in-memory message list, and what each node answered its clients."""

    def __init__(self, nodes: int = 3, *, generation: int = 1) -> None:
        self.now_us = 0
        self.stores: dict[int, LogStore] = {}
        self.nodes: dict[int, LogNode] = {}
        self.wire: list[tuple[int, int, Envelope]] = []  # (from node, to node, envelope)
        self.appended: dict[int, list[Appended]] = {}
        self.failed: dict[int, list[tuple[int, Exception]]] = {}
        self.down: set[int] = set()
        for node_id in range(1, nodes + 1):
            fs = SimFileSystem(Random(node_id), tear_probability=0.0)
            store = LogStore.open(
                fs,
                "/log",
                node_id,
                StoreConfig(preallocate=False, index_checkpoint_records=64),
                checkpoint_writes=50,
            )
            self.stores[node_id] = store
            self.nodes[node_id] = LogNode(
                node_id,
                generation,
                LogServerLoop(store.server),
                SequencerLoop(node_id, config=SequencerConfig(store_timeout_ticks=2)),
            )
            self.appended[node_id] = []
            self.failed[node_id] = []

    def learn(self, c: Chain, version: int = 1) -> None:
        for node in self.nodes.values():
            node.on_chain(c, version)

    def _emit(self, node: LogNode, out: LogServerOutput) -> None:
        store = self.stores[node.node_id]
        for dst, message in out.send:
            self.post(node.node_id, *node.route(dst, message))
        for plan in out.reads:
            self.post(node.node_id, *node.route(plan.src, store.answer(plan)))

    def post(self, src: int, dst: int, env: Envelope) -> None:
        # Every envelope crosses the wire encoded, as over the peer transport.
        self.wire.append((src, dst, envelope_decoder.decode(_encoder.encode(env))))

    def step(self) -> bool:
        """One round: every node's outputs, then every message delivered; True if any moved."""
        moved = False
        for node_id, node in self.nodes.items():
            if node_id in self.down:
                continue
            out = node.take()
            for dst, env in out.send:
                self.post(node_id, dst, env)
            self.appended[node_id] += out.appended
            self.failed[node_id] += out.failed
            served = node.poll_server(self.now_us)
            if served.job is not None:
                store = self.stores[node_id]
                store.write(served.job.writes)
                store.sync()
                self._emit(node, served)
                self._emit(node, node.server.job_done())
            else:
                self._emit(node, served)
            moved = moved or bool(out.send or out.appended or out.failed or served.send)
            moved = moved or served.job is not None or bool(served.reads)
        wire, self.wire = self.wire, []
        for _src, dst, env in wire:
            if dst not in self.down:
                self.nodes[dst].deliver(env, self.now_us)
        return moved or bool(wire)

    def run(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.step():
                return

    def tick(self, us: int) -> None:
        self.now_us += us
        for node_id, node in self.nodes.items():
            if node_id not in self.down:
                node.tick(self.now_us)


def test_an_append_on_the_sequencer_node_is_sequenced_there() -> None:
    net = Net()
    net.learn(chain(SequencerId(1, 1)))
    net.nodes[1].append(7, LOG, (b"a", b"b"), 5 * SECOND, 0)
    net.run()
    assert net.appended[1] == [Appended(7, 1, 2, 0)]
    assert net.nodes[1].forwarded_total == 0
    assert net.nodes[1].records_sequenced == 2
    assert all(not f for f in net.failed.values())


def test_an_append_elsewhere_is_forwarded_to_the_sequencer_and_answered_back() -> None:
    net = Net()
    net.learn(chain(SequencerId(2, 1)))
    net.nodes[1].append(11, LOG, (b"a",), 5 * SECOND, 0)
    net.nodes[3].append(12, LOG, (b"b", b"c"), 5 * SECOND, 0)
    # One message to the sequencer per append: a ForwardAppend from the APPENDER actor.
    first = net.nodes[1].take()
    ((dst, env),) = first.send
    assert dst == 2 and env.dst == SEQUENCER and env.src == address(1, APPENDER)
    assert isinstance(env.message, ForwardAppend)
    assert env.message.segment_index == 0 and env.message.budget_us == 5 * SECOND
    net.post(1, dst, env)
    net.run()
    assert net.appended[1] == [Appended(11, 1, 1, 0)]
    assert net.appended[3] == [Appended(12, 2, 3, 0)]
    assert net.nodes[2].appends_sequenced == 2 and net.nodes[2].records_sequenced == 3
    assert net.nodes[1].forwarded_inflight == 0 and net.nodes[3].forwarded_inflight == 0
    # The records are on the log-servers: two of the three hold each of them.
    loglet = chain(SequencerId(2, 1)).tail.loglet(LOG)
    tails = [s.server.state(loglet) for s in net.stores.values()]
    assert sum(1 for st in tails if st is not None and st.local_tail == 4) >= 2


def test_routing_by_actor_address_reaches_the_actor_that_asked() -> None:
    net = Net(2)
    a, b = _Recorder(), _Recorder()
    addr_a = net.nodes[1].add_actor(a)
    addr_b = net.nodes[1].add_actor(b)
    assert addr_a != addr_b and addr_a >> 20 == 1
    loglet = 77
    net.nodes[1].send_from(addr_b, 2, GetLogletInfo(loglet))
    net.run()
    # Node 2's log-server answered the address that asked: actor b, not a.
    assert a.got == []
    assert b.got == [(2, LogletInfo(loglet, 1, 1, False, 0))]
    net.nodes[1].remove_actor(addr_b)
    net.nodes[1].send_from(addr_b, 2, GetLogletInfo(loglet))
    net.run()  # an answer to a removed actor is dropped
    assert len(b.got) == 1 and a.got == []
    # A message to LOG_SERVER from a node reaches that node's log-server.
    env = Envelope(addr_a, LOG_SERVER, GetLogletInfo(loglet))
    net.post(1, 2, env)
    net.run()
    assert a.got == [(2, LogletInfo(loglet, 1, 1, False, 0))]


def test_a_forwarded_append_for_a_segment_not_hosted_fails_not_sequencer() -> None:
    net = Net()
    for node in (1, 3):
        net.nodes[node].on_chain(chain(SequencerId(2, 1)), 1)
    # Node 2 knows a newer chain in which another segment follows; node 1 does not.
    params = ReplicatedParams(SequencerId(3, 1), (1, 2, 3), R2)
    newer = Chain(
        LOG,
        (
            chain(SequencerId(2, 1)).segments[0],
            Segment(1, 1, REPLICATED, replicated=params),
        ),
    )
    net.nodes[2].on_chain(newer, 2)
    # Node 1 forwards for segment 0 of a log node 2 sequences, but node 2 never
    # started segment 0's sequencer (it learned the newer chain first).
    net.nodes[1].append(21, LOG, (b"x",), 5 * SECOND, 0)
    net.run()
    ((token, error),) = net.failed[1]
    assert token == 21 and isinstance(error, NotSequencer) and error.retryable
    assert net.appended[1] == []
    # And for a segment the sequencer's chain does not have at all (its chain is older).
    net3 = Net()
    net3.learn(chain(SequencerId(2, 1)))
    params2 = ReplicatedParams(SequencerId(2, 1), (1, 2, 3), R2)
    ahead = Chain(
        LOG,
        (chain(SequencerId(2, 1)).segments[0], Segment(1, 1, REPLICATED, replicated=params2)),
    )
    net3.nodes[1].on_chain(ahead, 2)
    net3.nodes[1].append(22, LOG, (b"y",), 5 * SECOND, 0)
    net3.run()
    assert [(t, type(e)) for t, e in net3.failed[1]] == [(22, NotSequencer)]


def test_a_forwarded_append_past_its_deadline_times_out_and_a_late_answer_is_dropped() -> None:
    net = Net()
    net.learn(chain(SequencerId(2, 1)))
    net.nodes[1].append(31, LOG, (b"late",), SECOND, 0)
    out = net.nodes[1].take()
    ((dst, env),) = out.send  # held back: the sequencer's answer comes too late
    net.tick(SECOND - 1)
    assert net.nodes[1].take().failed == []
    net.tick(1)
    failed = net.nodes[1].take().failed
    assert [(t, type(e)) for t, e in failed] == [(31, AppendTimeout)]
    assert net.nodes[1].forwarded_inflight == 0
    # The sequencer answers after all (its own deadline is measured from the budget).
    net.post(1, dst, env)
    net.run()
    assert net.appended[1] == [] and net.failed[1] == []  # N2: answered once, already
    assert net.nodes[2].records_sequenced == 1
    # A stray answer for a token this node never forwarded is dropped too.
    net.nodes[1].deliver(Envelope(address(2, SEQUENCER), APPENDER, AppendDone(999, 5)), net.now_us)
    assert net.nodes[1].take().appended == []


def test_n1_no_sequencer_for_an_older_generation_and_the_log_is_stale() -> None:
    net = Net(generation=2)
    net.learn(chain(SequencerId(1, 1)))  # node 1's sequencer of its first life
    assert not net.nodes[1].sequencers.hosts(chain(SequencerId(1, 1)).tail.loglet(LOG))
    assert net.nodes[1].stale_logs() == [LOG]
    assert net.nodes[2].stale_logs() == []
    # An append to it fails NotSequencer (retryable), locally or forwarded.
    net.nodes[1].append(41, LOG, (b"a",), 5 * SECOND, 0)
    net.nodes[2].append(42, LOG, (b"b",), 5 * SECOND, 0)
    net.run()
    assert [(t, type(e)) for t, e in net.failed[1]] == [(41, NotSequencer)]
    assert [(t, type(e)) for t, e in net.failed[2]] == [(42, NotSequencer)]
    # The chain moves the log to node 1's current generation: it sequences again.
    params = ReplicatedParams(SequencerId(1, 2), (1, 2, 3), R2)
    moved = Chain(
        LOG,
        (chain(SequencerId(1, 1)).segments[0], Segment(1, 1, REPLICATED, replicated=params)),
    )
    net.learn(moved, 2)
    assert net.nodes[1].stale_logs() == []
    net.nodes[2].append(43, LOG, (b"c",), 5 * SECOND, 0)
    net.run()
    assert net.appended[2] == [Appended(43, 1, 1, 1)]


def test_an_older_chain_version_is_ignored() -> None:
    net = Net(2)
    net.learn(chain(SequencerId(1, 1)), 5)
    net.learn(chain(SequencerId(2, 1)), 4)
    assert net.nodes[1].sequencer_of(LOG) == 1 and net.nodes[2].sequencer_of(LOG) == 1
