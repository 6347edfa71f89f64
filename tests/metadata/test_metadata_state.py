"""Unit tests for every rule of the metadata state machine."""

from __future__ import annotations

import pytest

from catenary.core.metadata.state import (
    MetadataConfig,
    MetadataStateMachine,
    SnapshotError,
)
from catenary.core.metadata.types import (
    Command,
    Compacted,
    Delete,
    Done,
    Event,
    KeyValue,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseKeepAlive,
    LeaseNotFound,
    LeaseRevoke,
    Precondition,
    PreconditionFailed,
    Put,
    Rejected,
    Request,
    Result,
    WatchBatch,
    Written,
    encode_request,
)

ABSENT = Precondition("absent")


def version_is(v: int) -> Precondition:
    return Precondition("version", v)


class Driver:
    """Applies commands at consecutive indexes, as Raft would."""

    def __init__(self, config: MetadataConfig | None = None) -> None:
        self.sm = MetadataStateMachine(config)
        self.index = 0
        self.request_id = 100

    def do(self, command: Command) -> Result:
        self.index += 1
        self.request_id += 1
        request_id, result = self.sm.apply(
            self.index, encode_request(Request(self.request_id, command))
        )
        assert request_id == self.request_id
        return result

    def noop(self) -> None:
        self.index += 1
        self.sm.apply_noop(self.index)


def test_put_get_and_versions_are_global_revisions() -> None:
    d = Driver()
    assert d.do(Put("a", b"1")) == Written(1)
    assert d.do(Put("b", b"2")) == Written(2)
    assert d.do(Put("a", b"3")) == Written(3)
    assert d.sm.get("a") == KeyValue("a", b"3", 3)
    assert d.sm.get("b") == KeyValue("b", b"2", 2)
    assert d.sm.get("c") is None
    assert d.sm.revision == 3
    assert d.sm.applied_index == 3


def test_versions_grow_across_delete_and_recreate() -> None:
    d = Driver()
    d.do(Put("a", b"1"))
    assert d.do(Delete("a")) == Written(2)
    assert d.sm.get("a") is None
    assert d.do(Put("a", b"again")) == Written(3)
    assert d.sm.get("a") == KeyValue("a", b"again", 3)


def test_delete_of_absent_key_changes_nothing() -> None:
    d = Driver()
    d.do(Put("a", b"1"))
    assert d.do(Delete("zzz")) == Written(1, absent=True)
    assert d.sm.revision == 1
    assert d.sm.changes_since(0, "", prefix=True) == WatchBatch((Event("put", "a", b"1", 1),), 1)


def test_precondition_absent() -> None:
    d = Driver()
    assert d.do(Put("a", b"1", ABSENT)) == Written(1)
    assert d.do(Put("a", b"2", ABSENT)) == PreconditionFailed("a", 1)
    assert d.sm.get("a") == KeyValue("a", b"1", 1)
    assert d.sm.revision == 1
    assert d.do(Delete("a", ABSENT)) == PreconditionFailed("a", 1)
    assert d.do(Delete("b", ABSENT)) == Written(1, absent=True)


def test_precondition_version() -> None:
    d = Driver()
    d.do(Put("a", b"1"))
    assert d.do(Put("a", b"2", version_is(7))) == PreconditionFailed("a", 1)
    assert d.do(Put("a", b"2", version_is(1))) == Written(2)
    assert d.do(Delete("a", version_is(1))) == PreconditionFailed("a", 2)
    assert d.do(Delete("a", version_is(2))) == Written(3)
    # version 0 means absent
    assert d.do(Put("a", b"x", version_is(5))) == PreconditionFailed("a", 0)
    assert d.do(Put("a", b"x", version_is(0))) == Written(4)


def test_bad_precondition_and_keys_are_rejected_without_change() -> None:
    d = Driver(MetadataConfig(key_bytes_max=4, value_bytes_max=3))
    results = [
        d.do(Put("a", b"1", Precondition("sometimes"))),
        d.do(Put("a", b"1", version_is(-1))),
        d.do(Put("", b"1")),
        d.do(Put("abcde", b"1")),
        d.do(Put("é" * 3, b"1")),  # 6 bytes in UTF-8
        d.do(Put("a", b"1234")),
        d.do(Delete("")),
        d.do(Put("a", b"1", lease=-3)),
    ]
    assert [(r.code if isinstance(r, Rejected) else r) for r in results] == [
        "bad_request",
        "bad_request",
        "bad_request",
        "too_large",
        "too_large",
        "too_large",
        "bad_request",
        "bad_request",
    ]
    assert d.sm.revision == 0 and d.sm.key_count == 0
    assert d.sm.applied_index == len(results)
    assert d.do(Put("abcd", b"123")) == Written(1)


def test_undecodable_entry_is_rejected_and_advances_index() -> None:
    sm = MetadataStateMachine()
    request_id, result = sm.apply(1, b"\xff\x00garbage")
    assert request_id == 0
    assert isinstance(result, Rejected) and result.code == "bad_request"
    assert sm.applied_index == 1
    assert sm.last_command is None
    request_id, result = sm.apply(2, encode_request(Request(9, Put("k", b"v"))))
    assert (request_id, result) == (9, Written(1))


def test_noop_advances_index_only() -> None:
    d = Driver()
    d.do(Put("a", b"1"))
    d.noop()
    assert d.sm.applied_index == 2
    assert d.sm.revision == 1


def test_applying_an_old_index_is_a_host_bug() -> None:
    d = Driver()
    d.do(Put("a", b"1"))
    with pytest.raises(AssertionError):
        d.sm.apply(1, encode_request(Request(1, Put("a", b"2"))))
    with pytest.raises(AssertionError):
        d.sm.apply_noop(1)


def test_list_in_key_order_with_prefix_and_limit() -> None:
    d = Driver()
    for key in ["b/2", "a", "b/1", "c", "b/3", "b"]:
        d.do(Put(key, key.encode()))
    kvs, more = d.sm.list("b/")
    assert [kv.key for kv in kvs] == ["b/1", "b/2", "b/3"] and not more
    kvs, more = d.sm.list("b/", limit=2)
    assert [kv.key for kv in kvs] == ["b/1", "b/2"] and more
    kvs, more = d.sm.list("b/", limit=3)
    assert len(kvs) == 3 and not more
    kvs, more = d.sm.list("")
    assert [kv.key for kv in kvs] == ["a", "b", "b/1", "b/2", "b/3", "c"]
    d.do(Delete("b/2"))
    assert [kv.key for kv in d.sm.list("b/")[0]] == ["b/1", "b/3"]
    assert d.sm.list("zz") == ((), False)


def test_lease_grant_ids_are_deterministic_and_ttl_checked() -> None:
    d = Driver(MetadataConfig(lease_ttl_ms_min=10, lease_ttl_ms_max=1000, leases_max=2))
    assert d.do(LeaseGrant(100)) == LeaseGranted(1, 100)
    assert d.do(LeaseGrant(200)) == LeaseGranted(2, 200)
    assert isinstance(bad := d.do(LeaseGrant(5)), Rejected) and bad.code == "bad_request"
    assert isinstance(bad := d.do(LeaseGrant(5000)), Rejected) and bad.code == "bad_request"
    assert isinstance(full := d.do(LeaseGrant(100)), Rejected) and full.code == "limit"
    assert d.do(LeaseRevoke(1)) == Done()
    assert d.do(LeaseGrant(300)) == LeaseGranted(3, 300)  # ids are never reused


def test_put_with_lease_needs_the_lease_and_moves_between_leases() -> None:
    d = Driver()
    assert d.do(Put("k", b"v", lease=7)) == LeaseNotFound(7)
    assert d.sm.get("k") is None and d.sm.revision == 0
    d.do(LeaseGrant(1000))  # lease 1
    d.do(LeaseGrant(1000))  # lease 2
    assert d.do(Put("k", b"v", lease=1)) == Written(1)
    assert d.sm.get("k") == KeyValue("k", b"v", 1, 1)
    d.do(Put("k", b"w", lease=2))
    lease1, lease2 = d.sm.lease(1), d.sm.lease(2)
    assert lease1 is not None and lease1.keys == ()
    assert lease2 is not None and lease2.keys == ("k",)
    d.do(Put("k", b"x"))  # lease 0 detaches
    lease2 = d.sm.lease(2)
    assert lease2 is not None and lease2.keys == ()
    d.do(LeaseRevoke(2))
    assert d.sm.get("k") == KeyValue("k", b"x", 3, 0)


def test_keepalive_checkpoint_and_revoke() -> None:
    d = Driver()
    d.do(LeaseGrant(1000))
    d.do(Put("a", b"1", lease=1))
    d.do(Put("b", b"2", lease=1))
    d.do(Put("c", b"3"))
    assert d.do(LeaseCheckpoint(((1, 400), (99, 5)), d.index)) == Done()
    info = d.sm.lease(1)
    assert info is not None and info.remaining_ms == 400
    assert d.do(LeaseKeepAlive(1)) == LeaseGranted(1, 1000)
    info = d.sm.lease(1)
    assert info is not None and info.remaining_ms == 1000 and info.refreshed_index == d.index
    assert d.do(LeaseKeepAlive(5)) == LeaseNotFound(5)
    # a checkpoint never records more than the TTL or less than 0
    d.do(LeaseCheckpoint(((1, 5000),), d.index))
    assert (info := d.sm.lease(1)) is not None and info.remaining_ms == 1000
    d.do(LeaseCheckpoint(((1, -5),), d.index))
    assert (info := d.sm.lease(1)) is not None and info.remaining_ms == 0
    # measured before the lease's last refresh: that refresh's fresh TTL stays
    assert d.do(LeaseKeepAlive(1)) == LeaseGranted(1, 1000)
    d.do(LeaseCheckpoint(((1, 10),), d.index - 1))
    assert (info := d.sm.lease(1)) is not None and info.remaining_ms == 1000
    # a checkpoint of the earlier format (no index) is replayed as it was applied then
    d.do(LeaseCheckpoint(((1, 20),)))
    assert (info := d.sm.lease(1)) is not None and info.remaining_ms == 20
    revision = d.sm.revision
    assert d.do(LeaseRevoke(1)) == Done()
    assert d.sm.lease(1) is None
    assert d.sm.get("a") is None and d.sm.get("b") is None
    assert d.sm.get("c") is not None
    # each deleted key bumps the revision once and is one delete event, in key order
    assert d.sm.revision == revision + 2
    batch = d.sm.changes_since(revision, "", prefix=True)
    assert batch == WatchBatch(
        (
            Event("delete", "a", b"", revision + 1),
            Event("delete", "b", b"", revision + 2),
        ),
        revision + 2,
    )
    assert d.do(LeaseRevoke(1)) == LeaseNotFound(1)


def test_expire_deletes_leases_and_keys_but_spares_refreshed_ones() -> None:
    d = Driver()
    d.do(LeaseGrant(1000))  # 1, index 1
    d.do(LeaseGrant(1000))  # 2, index 2
    d.do(Put("x", b"", lease=1))
    d.do(Put("y", b"", lease=2))
    decided_at = d.index
    d.do(LeaseKeepAlive(2))  # refreshed after the proposer decided
    assert d.do(LeaseExpire((2, 1, 42), applied_index=decided_at)) == Done()
    assert d.sm.lease(1) is None and d.sm.get("x") is None
    assert d.sm.lease(2) is not None and d.sm.get("y") is not None
    # an expiry decided after the refresh does delete it
    assert d.do(LeaseExpire((2,), applied_index=d.index)) == Done()
    assert d.sm.lease(2) is None and d.sm.get("y") is None
    assert d.sm.leases() == ()


def test_watch_key_prefix_limit_and_never_back_in_time() -> None:
    d = Driver()
    d.do(Put("a", b"1"))  # 1
    d.do(Put("b/x", b"2"))  # 2
    d.do(Put("a", b"3"))  # 3
    d.do(Delete("b/x"))  # 4
    d.do(Put("b/y", b"5"))  # 5
    assert d.sm.changes_since(0, "a") == WatchBatch(
        (Event("put", "a", b"1", 1), Event("put", "a", b"3", 3)), 5
    )
    assert d.sm.changes_since(1, "a") == WatchBatch((Event("put", "a", b"3", 3),), 5)
    assert d.sm.changes_since(3, "a") == WatchBatch((), 5)
    assert d.sm.changes_since(0, "b/", prefix=True, limit=2) == WatchBatch(
        (Event("put", "b/x", b"2", 2), Event("delete", "b/x", b"", 4)), 4
    )
    assert d.sm.changes_since(4, "b/", prefix=True, limit=2) == WatchBatch(
        (Event("put", "b/y", b"5", 5),), 5
    )
    # "b" as an exact key matches nothing, as a prefix matches both keys
    assert d.sm.changes_since(0, "b") == WatchBatch((), 5)
    # a watcher ahead of this member stays where it is
    assert d.sm.changes_since(9, "a") == WatchBatch((), 9)


def test_watch_history_is_bounded_and_reports_compaction() -> None:
    d = Driver(MetadataConfig(watch_history_max=3))
    for i in range(200):
        d.do(Put(f"k{i % 5}", str(i).encode()))
    assert d.sm.revision == 200
    assert d.sm.history_start == 197
    assert d.sm.changes_since(196, "k1") == Compacted(197, 200)
    batch = d.sm.changes_since(197, "", prefix=True)
    assert isinstance(batch, WatchBatch)
    assert [e.version for e in batch.events] == [198, 199, 200]
    assert d.sm.changes_since(199, "k4") == WatchBatch((Event("put", "k4", b"199", 200),), 200)


def test_watch_history_of_zero_keeps_nothing() -> None:
    d = Driver(MetadataConfig(watch_history_max=0))
    d.do(Put("a", b"1"))
    assert d.sm.changes_since(0, "a") == Compacted(1, 1)
    assert d.sm.changes_since(1, "a") == WatchBatch((), 1)


def test_snapshot_restore_roundtrip_drops_history() -> None:
    d = Driver()
    d.do(LeaseGrant(500))
    d.do(Put("a", b"1", lease=1))
    d.do(Put("b", b"2"))
    d.do(LeaseCheckpoint(((1, 123),), d.index))
    d.noop()
    data = d.sm.snapshot()
    restored = MetadataStateMachine.restore(data)
    assert restored.snapshot() == data
    assert restored.applied_index == d.sm.applied_index == 5
    assert restored.revision == 2
    assert restored.get("a") == KeyValue("a", b"1", 1, 1)
    assert restored.lease(1) == d.sm.lease(1)
    assert restored.history_start == 2
    assert restored.changes_since(1, "a") == Compacted(2, 2)
    # the restored machine keeps going identically
    command = encode_request(Request(1, LeaseGrant(10)))
    assert restored.apply(6, command) == d.sm.apply(6, command) == (1, LeaseGranted(2, 10))
    command = encode_request(Request(2, LeaseRevoke(1)))
    assert restored.apply(7, command) == d.sm.apply(7, command)
    assert restored.snapshot() == d.sm.snapshot()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93\x01\x02",
        b"not msgpack at all",
    ],
)
def test_restore_rejects_garbage(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        MetadataStateMachine.restore(data)


def test_restore_rejects_inconsistent_snapshots() -> None:
    import msgspec

    from catenary.core.metadata.state import LeaseInfo, _Snapshot

    def encode(snap: _Snapshot) -> bytes:
        return msgspec.msgpack.encode(snap)

    good = _Snapshot(
        1, 3, 2, 2, (KeyValue("a", b"", 1, 1), KeyValue("b", b"", 2)), (LeaseInfo(1, 10, 10, 1),)
    )
    MetadataStateMachine.restore(encode(good))
    bad = [
        msgspec.structs.replace(good, format=99),
        msgspec.structs.replace(good, kvs=tuple(reversed(good.kvs))),
        msgspec.structs.replace(good, revision=1),
        msgspec.structs.replace(good, leases=()),
        msgspec.structs.replace(good, next_lease=1),
        msgspec.structs.replace(good, leases=good.leases * 2),
    ]
    for snap in bad:
        with pytest.raises(SnapshotError):
            MetadataStateMachine.restore(encode(snap))


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        MetadataConfig(key_bytes_max=0)
    with pytest.raises(ValueError):
        MetadataConfig(lease_ttl_ms_min=10, lease_ttl_ms_max=5)
    with pytest.raises(ValueError):
        MetadataConfig(watch_history_max=-1)
