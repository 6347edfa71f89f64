"""Property tests: determinism, snapshot/restore, and agreement with a naive model."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from catenary.core.metadata.state import MetadataConfig, MetadataStateMachine
from catenary.core.metadata.types import (
    Command,
    Delete,
    KeyValue,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Precondition,
    PreconditionFailed,
    Put,
    Request,
    WatchBatch,
    Written,
    encode_request,
)

KEYS = st.sampled_from(["a", "a/1", "a/2", "b", "bb", "c"])
LEASES = st.integers(min_value=0, max_value=6)
PRECONDITIONS = st.one_of(
    st.just(Precondition()),
    st.just(Precondition("absent")),
    st.builds(Precondition, st.just("version"), st.integers(min_value=0, max_value=40)),
)
COMMANDS: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, KEYS, st.binary(max_size=4), PRECONDITIONS, LEASES),
    st.builds(Delete, KEYS, PRECONDITIONS),
    st.builds(LeaseGrant, st.integers(min_value=1, max_value=1000)),
    st.builds(LeaseKeepAlive, LEASES),
    st.builds(LeaseRevoke, LEASES),
    st.builds(
        LeaseCheckpoint,
        st.lists(st.tuples(LEASES, st.integers(0, 1000)), max_size=3).map(tuple),
    ),
    st.builds(
        LeaseExpire,
        st.lists(LEASES, max_size=3).map(tuple),
        st.integers(min_value=0, max_value=60),
    ),
)
# An entry is a command, a NOOP (None) or undecodable bytes.
ENTRIES = st.lists(
    st.one_of(COMMANDS, st.none(), st.binary(min_size=1, max_size=3)),
    max_size=60,
)
CONFIG = MetadataConfig(watch_history_max=16, leases_max=4)


def feed(sm: MetadataStateMachine, entries: list[Command | bytes | None], first: int) -> list[str]:
    """Apply entries from index ``first``; returns the results, printed, for comparison."""
    out = []
    for offset, entry in enumerate(entries):
        index = first + offset
        if entry is None:
            sm.apply_noop(index)
            out.append("noop")
        elif isinstance(entry, bytes):
            out.append(repr(sm.apply(index, b"\xc1" + entry)))  # 0xc1 is never valid msgpack
        else:
            out.append(repr(sm.apply(index, encode_request(Request(index, entry)))))
    return out


@settings(max_examples=150, deadline=None)
@given(ENTRIES)
def test_two_replicas_applying_the_same_entries_are_equal(
    entries: list[Command | bytes | None],
) -> None:
    one, two = MetadataStateMachine(CONFIG), MetadataStateMachine(CONFIG)
    assert feed(one, entries, 1) == feed(two, entries, 1)
    assert one.snapshot() == two.snapshot()
    assert one.changes_since(one.history_start, "", prefix=True) == two.changes_since(
        two.history_start, "", prefix=True
    )


@settings(max_examples=150, deadline=None)
@given(ENTRIES, st.integers(min_value=0, max_value=60))
def test_snapshot_then_restore_continues_identically(
    entries: list[Command | bytes | None], cut: int
) -> None:
    cut = min(cut, len(entries))
    straight = MetadataStateMachine(CONFIG)
    expected = feed(straight, entries, 1)
    head = MetadataStateMachine(CONFIG)
    results = feed(head, entries[:cut], 1)
    data = head.snapshot()
    restored = MetadataStateMachine.restore(data, CONFIG)
    assert restored.snapshot() == data
    assert restored.list("") == head.list("")
    assert restored.leases() == head.leases()
    results += feed(restored, entries[cut:], cut + 1)
    assert results == expected
    assert restored.snapshot() == straight.snapshot()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(Put, KEYS, st.binary(max_size=4), PRECONDITIONS),
            st.builds(Delete, KEYS, PRECONDITIONS),
        ),
        max_size=60,
    )
)
def test_agrees_with_a_naive_model_and_watch_replays_to_state(
    commands: list[Put | Delete],
) -> None:
    sm = MetadataStateMachine(MetadataConfig(watch_history_max=1000))
    model: dict[str, tuple[bytes, int]] = {}
    revision = 0
    for index, command in enumerate(commands, start=1):
        _, result = sm.apply(index, encode_request(Request(index, command)))
        current = model.get(command.key, (b"", 0))[1]
        pre = command.precondition
        holds = (
            pre.kind == "none"
            or (pre.kind == "absent" and current == 0)
            or (pre.kind == "version" and current == pre.version)
        )
        if not holds:
            assert result == PreconditionFailed(command.key, current)
            continue
        absent = False
        if isinstance(command, Put):
            revision += 1
            model[command.key] = (command.value, revision)
        elif command.key in model:
            revision += 1
            del model[command.key]
        else:
            absent = True
        assert result == Written(revision, absent=absent)
    assert sm.revision == revision
    assert sm.list("")[0] == tuple(
        KeyValue(key, value, version) for key, (value, version) in sorted(model.items())
    )
    # replaying the whole watch history rebuilds the same state
    batch = sm.changes_since(0, "", prefix=True)
    assert isinstance(batch, WatchBatch) and batch.revision == revision
    replayed: dict[str, tuple[bytes, int]] = {}
    for event in batch.events:
        if event.kind == "put":
            replayed[event.key] = (event.value, event.version)
        else:
            del replayed[event.key]
    assert replayed == model


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.sampled_from(["put", "del", "lg", "lk", "lr", "lc", "lx", "absent", "version"]),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), MSGPACK_VALUES.map(msgspec.msgpack.encode))))
def test_arbitrary_entry_data_never_raises(entries: list[bytes]) -> None:
    one, two = MetadataStateMachine(CONFIG), MetadataStateMachine(CONFIG)
    for index, data in enumerate(entries, start=1):
        assert one.apply(index, data) == two.apply(index, data)
    assert one.applied_index == len(entries)
    assert one.snapshot() == two.snapshot()
