"""Handshake values and checks, without sockets."""

from __future__ import annotations

import msgspec
import pytest

from catenary.wire import (
    MAGIC,
    PEER_PROTOCOL_VERSION_MIN,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameKind,
    HandshakeError,
    HandshakeRefused,
    Hello,
    HelloAck,
    HelloRefused,
    MalformedPayload,
    PeerService,
    RefusalCode,
    Role,
    UnexpectedFrameKind,
    UnknownPeerService,
    agreed_version,
    check_hello,
    decode_handshake,
    decode_hello,
    decode_hello_reply,
    decode_peer_message,
    encode_frame,
    encode_hello,
    encode_hello_reply,
    encode_peer_message,
    make_hello,
    peer_service_of,
)

pytestmark = pytest.mark.timeout(30)

PEERS = frozenset({Role.PEER})
BOTH = frozenset({Role.PEER, Role.CLIENT})


def _one(data: bytes) -> Frame:
    frames = FrameDecoder().feed(data)
    assert len(frames) == 1
    return frames[0]


def test_hello_round_trip_and_defaults() -> None:
    hello = make_hello("prod", 3, 7, Role.PEER)
    assert hello.magic == MAGIC
    assert hello.protocol_version == PROTOCOL_VERSION
    frame = _one(encode_hello(hello))
    assert frame.kind == FrameKind.HELLO
    assert decode_hello(frame) == hello
    assert decode_handshake(frame.kind, frame.payload) == hello
    # Keyword construction (magic and version defaulted) is the same value.
    assert Hello(cluster_name="prod", node_id=3, generation=7, role="peer") == hello


def test_wire_order_of_hello_fields_is_fixed() -> None:
    hello = make_hello("c", 1, 2, Role.CLIENT)
    assert msgspec.msgpack.decode(encode_hello(hello)[5:]) == [
        MAGIC,
        PROTOCOL_VERSION,
        "c",
        1,
        2,
        "client",
    ]


def test_accepts_a_good_peer_and_a_good_client() -> None:
    assert check_hello(make_hello("c", 2, 1, Role.PEER), cluster_name="c", roles=BOTH) is None
    assert check_hello(make_hello("c", 0, 0, Role.CLIENT), cluster_name="c", roles=BOTH) is None


@pytest.mark.parametrize(
    ("hello", "roles", "code", "words"),
    [
        (
            Hello(magic=1, cluster_name="c", node_id=2, generation=1, role="peer"),
            BOTH,
            RefusalCode.BAD_MAGIC,
            "magic",
        ),
        (
            Hello(protocol_version=99, cluster_name="c", node_id=2, generation=1, role="peer"),
            BOTH,
            RefusalCode.VERSION,
            "99",
        ),
        (make_hello("c", 0, 0, Role.CLIENT), PEERS, RefusalCode.ROLE, "client"),
        (
            Hello(cluster_name="c", node_id=2, generation=1, role="admin"),
            BOTH,
            RefusalCode.ROLE,
            "admin",
        ),
        (make_hello("other", 2, 1, Role.PEER), BOTH, RefusalCode.CLUSTER, "'other'"),
        (make_hello("c", 0, 1, Role.PEER), BOTH, RefusalCode.IDENTITY, "N0:1"),
        (make_hello("c", 2, 0, Role.PEER), BOTH, RefusalCode.IDENTITY, "N2:0"),
        (make_hello("c", -1, 0, Role.CLIENT), BOTH, RefusalCode.IDENTITY, "negative"),
    ],
)
def test_refusals_name_their_reason(
    hello: Hello, roles: frozenset[Role], code: str, words: str
) -> None:
    refused = check_hello(hello, cluster_name="c", roles=roles)
    assert refused is not None
    assert refused.code == code
    assert words in refused.reason


def test_hook_runs_last_and_decides() -> None:
    seen: list[Hello] = []

    def hook(hello: Hello) -> HelloRefused | None:
        seen.append(hello)
        if hello.generation < 5:
            return HelloRefused(
                RefusalCode.STALE_GENERATION, f"N{hello.node_id}:{hello.generation} < 5"
            )
        return None

    old = make_hello("c", 2, 4, Role.PEER)
    refused = check_hello(old, cluster_name="c", roles=PEERS, validate=hook)
    assert refused == HelloRefused(RefusalCode.STALE_GENERATION, "N2:4 < 5")
    assert (
        check_hello(make_hello("c", 2, 5, Role.PEER), cluster_name="c", roles=PEERS, validate=hook)
        is None
    )
    # The hook is not consulted for a hello that already failed a basic check.
    check_hello(make_hello("x", 2, 9, Role.PEER), cluster_name="c", roles=PEERS, validate=hook)
    assert [h.generation for h in seen] == [4, 5]


def test_ack_is_checked_by_the_dialer() -> None:
    ack_frame = _one(encode_hello_reply(HelloAck(PROTOCOL_VERSION, "c", 3, 9)))
    assert decode_hello_reply(ack_frame, cluster_name="c", expect_node_id=3) == HelloAck(
        PROTOCOL_VERSION, "c", 3, 9
    )
    assert decode_hello_reply(ack_frame, cluster_name="c").node_id == 3
    with pytest.raises(HandshakeError, match="dialed N4 but reached N3:9"):
        decode_hello_reply(ack_frame, cluster_name="c", expect_node_id=4)
    with pytest.raises(HandshakeError, match="cluster 'c', not 'd'"):
        decode_hello_reply(ack_frame, cluster_name="d")
    bad_version = _one(encode_hello_reply(HelloAck(0, "c", 3, 9)))
    with pytest.raises(HandshakeError, match="version 0"):
        decode_hello_reply(bad_version, cluster_name="c")


def test_refusal_reaches_the_dialer_as_handshake_refused() -> None:
    frame = _one(encode_hello_reply(HelloRefused(RefusalCode.CLUSTER, "cluster 'x' is not 'c'")))
    assert frame.kind == FrameKind.HELLO_REFUSED
    with pytest.raises(HandshakeRefused) as info:
        decode_hello_reply(frame, cluster_name="c")
    assert info.value.code == RefusalCode.CLUSTER
    assert "cluster 'x'" in str(info.value)
    assert isinstance(decode_handshake(frame.kind, frame.payload), HelloRefused)


def test_wrong_frames_during_the_handshake() -> None:
    peer = Frame(FrameKind.PEER, b"\x90")
    with pytest.raises(UnexpectedFrameKind):
        decode_hello(peer)
    with pytest.raises(UnexpectedFrameKind):
        decode_hello_reply(peer, cluster_name="c")
    with pytest.raises(UnexpectedFrameKind):
        decode_handshake(peer.kind, peer.payload)
    with pytest.raises(MalformedPayload):
        decode_hello(_one(encode_frame(FrameKind.HELLO, b"\x93\x01\x02\x03")))
    with pytest.raises(MalformedPayload):
        decode_hello_reply(_one(encode_frame(FrameKind.HELLO_ACK, b"")), cluster_name="c")
    with pytest.raises(MalformedPayload):
        decode_hello_reply(_one(encode_frame(FrameKind.HELLO_REFUSED, b"\xc1")), cluster_name="c")


def test_a_peer_needs_the_version_with_service_tags_and_a_client_of_either_is_served() -> None:
    old_peer = Hello(protocol_version=1, cluster_name="c", node_id=2, generation=1, role="peer")
    refusal = check_hello(old_peer, cluster_name="c", roles=BOTH)
    assert refusal is not None and refusal.code == RefusalCode.VERSION
    assert "service tag" in refusal.reason and str(PEER_PROTOCOL_VERSION_MIN) in refusal.reason
    old_client = Hello(protocol_version=1, cluster_name="c", node_id=0, generation=0, role="client")
    assert check_hello(old_client, cluster_name="c", roles=BOTH) is None
    # The ack speaks the lower of the two versions.
    assert agreed_version(old_client) == 1
    assert agreed_version(make_hello("c", 2, 1, Role.PEER)) == PROTOCOL_VERSION == 2
    # A dialing peer refuses an acceptor that chose a version without service tags.
    old_ack = _one(encode_hello_reply(HelloAck(1, "c", 3, 9)))
    assert decode_hello_reply(old_ack, cluster_name="c").protocol_version == 1
    with pytest.raises(HandshakeError, match=r"version 1, not in \[2, 2\]"):
        decode_hello_reply(old_ack, cluster_name="c", version_min=PEER_PROTOCOL_VERSION_MIN)


def test_peer_frames_carry_the_service_tag_first() -> None:
    encoder = msgspec.msgpack.Encoder()
    decoder: msgspec.msgpack.Decoder[list[int]] = msgspec.msgpack.Decoder(list[int])
    data = encode_peer_message(PeerService.RAFT, [1, 2], encoder)
    (frame,) = FrameDecoder().feed(data)
    assert frame.kind == FrameKind.PEER
    assert frame.payload == bytes([PeerService.RAFT]) + encoder.encode([1, 2])
    assert PeerService.RAFT == 0
    served = {PeerService.RAFT: None}
    assert peer_service_of(frame, served) == 0
    assert decode_peer_message(frame, decoder) == [1, 2]
    with pytest.raises(UnknownPeerService, match=r"service tag 5.*serves raft=0") as info:
        peer_service_of(Frame(FrameKind.PEER, b"\x05\x90"), served)
    assert info.value.service == 5
    with pytest.raises(MalformedPayload, match="without a service tag"):
        peer_service_of(Frame(FrameKind.PEER, b""), served)
    with pytest.raises(MalformedPayload):
        decode_peer_message(Frame(FrameKind.PEER, b"\x00\xc1"), decoder)
    with pytest.raises(ValueError, match="one byte"):
        encode_peer_message(256, [1], encoder)
